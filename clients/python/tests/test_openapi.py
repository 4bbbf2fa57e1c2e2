"""The client's models agree with the service's own `/openapi.json`."""

from __future__ import annotations

import dataclasses
import enum

import httpx
import pytest
from conftest import Service

from approvals_client import Approval, ApprovalPage, AuditEvent, AuditKind, Decision, Problem, Status, SubmitResponse

CLIENT_ONLY = {"extra", "request_id", "created"}


@pytest.fixture(scope="module")
def schemas(service: Service) -> dict:
    document = httpx.get(f"{service.base_url}/openapi.json").json()
    return dict(document["components"]["schemas"])


@pytest.mark.parametrize("model", [Approval, SubmitResponse, ApprovalPage, AuditEvent, Problem], ids=lambda m: m.__name__)
def test_every_property_and_only_those(schemas: dict, model: type) -> None:
    schema = schemas[model.__name__]
    fields = {f.name: f for f in dataclasses.fields(model) if f.name not in CLIENT_ONLY}
    assert set(fields) == set(schema["properties"]), model.__name__
    required = set(schema.get("required", []))
    without_default = {
        name for name, f in fields.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    # What the service always sends, the model requires; what it may leave out has a default.
    assert without_default <= required, without_default - required
    optional_in_model = set(fields) - without_default
    assert not optional_in_model & required, optional_in_model & required


@pytest.mark.parametrize(
    "name,enumeration", [("Status", Status), ("PolicyDecision", Decision), ("AuditKind", AuditKind)]
)
def test_enumerations(schemas: dict, name: str, enumeration: type[enum.Enum]) -> None:
    assert [e.value for e in enumeration] == schemas[name]["enum"]


def test_the_paths_the_client_calls_exist(service: Service) -> None:
    paths = httpx.get(f"{service.base_url}/openapi.json").json()["paths"]
    base = "/v1/tenants/{tenant}"
    for path, method in [
        ("/approvals", "post"),
        ("/approvals", "get"),
        ("/approvals/{id}", "get"),
        ("/approvals/{id}/decision", "get"),
        ("/approvals/{id}/accept", "post"),
        ("/approvals/{id}/reject", "post"),
        ("/events", "get"),
    ]:
        assert method in paths[base + path], path
    names = [p["name"] for p in paths[base + "/approvals/{id}/decision"]["get"]["parameters"]]
    assert "wait_seconds" in names
    names = [p["name"] for p in paths[base + "/approvals"]["get"]["parameters"]]
    assert {"status", "limit", "cursor"} <= set(names)
