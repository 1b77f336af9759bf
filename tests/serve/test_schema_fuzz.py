"""``/openapi.json`` fuzzed with schemathesis against the app running under uvicorn on
127.0.0.1: no 5xx, status codes and bodies as the schema declares them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from support.serve_support import Catalogue, running

from assemblage_assets.serve.app import create_app
from assemblage_assets.serve.service import SearchService


@pytest.fixture(scope="module")
def base_url(catalogue: Catalogue) -> Iterator[str]:
    service = SearchService(catalogue.dsn, catalogue.provider())
    try:
        with running(create_app(service, catalogue.config())) as url:
            yield url
    finally:
        service.close()


def test_no_server_errors_and_answers_match_the_schema(base_url: str) -> None:
    """Every operation, valid and invalid inputs (schemathesis' positive and negative modes). The
    loop is written out because schemathesis' lazy pytest fixture does not run under pytest 9."""
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/api/search", "/api/images/{image_id}", "/api/search/image",
                                              "/api/shards/{shard}/failures", "/api/duplicates"}
    calls: dict[str, int] = {}

    def fuzzer(operation, mode):  # noqa: ANN001, ANN202 - one hypothesis test per operation and mode
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=20, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate])
        def fuzz(case) -> None:  # noqa: ANN001 - a schemathesis Case
            case.call_and_validate(base_url=base_url, checks=checks)
            calls[operation.label] = calls.get(operation.label, 0) + 1

        return fuzz

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzzer(operation, mode)()
            except Unsatisfiable:
                # nothing of this operation can be made invalid by schemathesis (a bare path)
                assert mode == GenerationMode.NEGATIVE, operation.label
    assert len(calls) == len(operations) and min(calls.values()) >= 10, calls
