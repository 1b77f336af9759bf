"""Loopback servers and fixtures shared by the tests of every area."""
