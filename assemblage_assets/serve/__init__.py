"""The search service and browse page (``assemblage serve``): a FastAPI app over the catalogue."""
