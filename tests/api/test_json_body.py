"""A submit body must be sent as JSON (else 415 naming application/json, not a 422), and be
standard JSON (NaN, Infinity and numbers past a float's range are a 422, not a 500).

The bodies here carry an unknown field, so a body that is read as JSON answers 422 for that
field (``extra_forbidden``) and nothing is enqueued: the answer tells how the body was read.
"""

from __future__ import annotations

import json
import math
import string
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api import json_body
from app.main import create_app
from tests.conftest import settings_from

BODY = b'{"unknown_field": 1}'


def read_as_json(response_json: dict[str, Any]) -> bool:
    detail = response_json["detail"]
    return isinstance(detail, list) and detail[0]["loc"] == ["body", "unknown_field"]


def post(api: TestClient, content_type: str | None, body: bytes = BODY) -> tuple[int, Any]:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    response = api.post("/v1/tasks/noop", content=body, headers=headers)
    return response.status_code, response.json()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded",  # curl -d without -H
        "text/plain",
        "text/plain;charset=UTF-8",  # a browser's fetch() with a string body
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/jsonp",
        "json",
    ],
)
def test_a_body_that_is_not_json_is_415_naming_application_json(
    api: TestClient, content_type: str
) -> None:
    status, body = post(api, content_type)
    assert status == 415
    assert "application/json" in body["detail"]
    assert content_type.split(";")[0] in body["detail"]


def test_a_body_without_content_type_is_415(api: TestClient) -> None:
    # FastAPI's strict_content_type (the default) does not read such a body as JSON: a page in
    # a browser can send one without a CORS preflight, and the local stack has no API key.
    status, body = post(api, None)
    assert status == 415
    assert "no Content-Type" in body["detail"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/merge-patch+json",
        "application/vnd.courier.v1+json; charset=utf-8",
    ],
)
def test_json_media_types_are_read_as_json(api: TestClient, content_type: str) -> None:
    status, body = post(api, content_type)
    assert status == 422
    assert read_as_json(body)


def test_an_empty_body_is_accepted_whatever_its_type(api: TestClient) -> None:
    # curl -X POST -d '' sends the form type: there is no body to misread.
    status, body = post(api, "application/x-www-form-urlencoded", b"")
    assert status == 202, body


def test_the_openapi_document_lists_415_on_every_submit_route(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    submits = [p for p in paths if p.startswith("/v1/tasks/") and "post" in paths[p]]
    assert submits
    for path in submits:
        assert "application/json" in paths[path]["post"]["responses"]["415"]["description"]


TOKEN = st.text(string.ascii_letters + string.digits + "!#$&^_.+-", min_size=1, max_size=12)
MAIN_TYPE = st.one_of(st.sampled_from(["application", "APPLICATION", "text", "multipart"]), TOKEN)
SUB_TYPE = st.one_of(
    st.sampled_from(["json", "JSON", "x-www-form-urlencoded", "plain", "jsonx", "json+xml"]),
    TOKEN,
    TOKEN.map(lambda t: t + "+json"),
)
PARAMS = st.lists(st.tuples(TOKEN, TOKEN).map(lambda kv: f"{kv[0]}={kv[1]}"), max_size=2).map(
    lambda ps: "".join(f"; {p}" for p in ps)
)


def expected_json(main: str, sub: str) -> bool:
    """RFC 6838 by hand: application/json or a +json structured suffix, case-insensitively."""
    sub = sub.lower()
    return main.lower() == "application" and (sub == "json" or sub.endswith("+json"))


@given(main=MAIN_TYPE, sub=SUB_TYPE, params=PARAMS, space=st.sampled_from(["", " "]))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_exactly_the_json_media_types_are_read_as_json(
    api: TestClient, main: str, sub: str, params: str, space: str
) -> None:
    status, body = post(api, f"{space}{main}/{sub}{params}")
    if expected_json(main, sub):
        assert status == 422 and read_as_json(body), body
    else:
        assert status == 415, body
        assert "application/json" in body["detail"]


@given(content_type=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_content_type_gets_415_or_is_read_as_json(api: TestClient, content_type: str) -> None:
    status, body = post(api, content_type)
    assert status in (415, 422), body
    if status == 422:
        assert read_as_json(body)
        assert content_type.split(";")[0].strip().lower().startswith("application/")


def json_invalid_reason(response_json: dict[str, Any]) -> str:
    (error,) = response_json["detail"]
    assert error["type"] == "json_invalid"
    return str(error["ctx"]["error"])


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"echo": NaN}', "NaN is not a JSON value"),
        (b'{"echo": [Infinity]}', "Infinity is not a JSON value"),
        (b'{"sleep_seconds": -Infinity}', "-Infinity is not a JSON value"),
        (b'{"sleep_seconds": NaN}', "NaN is not a JSON value"),
        (b'{"echo": 1e400}', "a number too large for a float"),
    ],
)
def test_numbers_json_does_not_have_are_422_naming_them(
    api: TestClient, body: bytes, reason: str
) -> None:
    status, answer = post(api, "application/json", body)
    assert status == 422
    assert json_invalid_reason(answer) == reason


def test_an_integer_too_long_to_read_is_422(courier_vars: dict[str, str]) -> None:
    settings = settings_from({**courier_vars, "COURIER_MAX_PAYLOAD_BYTES": "65536"})
    with TestClient(create_app(settings)) as client:
        status, answer = post(client, "application/json", b'{"echo": ' + b"7" * 5000 + b"}")
    assert status == 422
    assert json_invalid_reason(answer) == "a number too long to read"


def test_a_value_nested_too_deep_to_read_is_422(api: TestClient) -> None:
    """Past the parser's recursion limit (~1000 levels), FastAPI answered an undocumented 400
    "There was an error parsing the body" that did not say what was wrong."""
    nested = b'{"echo": ' + b"[" * 1500 + b"]" * 1500 + b"}"
    status, answer = post(api, "application/json", nested)
    assert status == 422
    assert json_invalid_reason(answer) == "nested too deep to read"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/tasks/noop", rb'{"echo": "\ud800"}'),
        ("/v1/tasks/noop", rb'{"echo": ["x\udfff"]}'),
        ("/v1/tasks/noop", rb'{"echo": {"\udc00": 1}}'),
        ("/v1/tasks/noop", b'{"echo": "\xed\xa0\x80"}'),  # the surrogate's bytes
        ("/v1/tasks/noop", '{"echo": "\\ud800"}'.encode("utf-16")),
        # Refused by the model, whose 422 quoted the surrogate back: a 500.
        ("/v1/tasks/process_image", rb'{"echo": "\ud800"}'),
        ("/v1/tasks/noop", rb'{"sleep_seconds": "\ud800"}'),
    ],
)
def test_a_lone_surrogate_is_422_naming_it(api: TestClient, path: str, body: bytes) -> None:
    response = api.post(path, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert json_invalid_reason(response.json()) == "a lone surrogate is not a Unicode character"


def test_a_surrogate_pair_is_one_character_and_read(api: TestClient) -> None:
    status, answer = post(api, "application/json", rb'{"unknown_field": "\ud83d\ude00"}')
    assert status == 422 and read_as_json(answer), answer
    assert answer["detail"][0]["input"] == "\N{GRINNING FACE}"


NUMBERS = st.floats() | st.integers(min_value=-(10**400), max_value=10**400)


@given(number=NUMBERS, field=st.sampled_from(["sleep_seconds", "echo"]))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_any_number_python_writes_gets_a_short_json_answer(
    api: TestClient, number: float, field: str
) -> None:
    body = json.dumps({field: number, "unknown_field": 1}).encode()  # NaN, Infinity too
    status, answer = post(api, "application/json", body)
    assert status == 422
    assert all(len(error["msg"]) < 200 for error in answer["detail"]), answer
    if isinstance(number, float) and not math.isfinite(number):
        json_invalid_reason(answer)
    else:
        assert read_as_json(answer) or answer["detail"][0]["loc"] == ["body", field]


def _read(loads: Any, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", json.dumps(loads(body))
    except Exception as exc:
        return type(exc).__name__, str(exc)


JSON_TEXTS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
).map(json.dumps)
ENCODINGS = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32-be"])


@settings(max_examples=300, deadline=None)
@given(
    body=st.tuples(JSON_TEXTS, ENCODINGS).map(lambda pair: pair[0].encode(pair[1]))
    | st.binary(max_size=16)
    | st.sampled_from([b"NaN", b"[Infinity]", b"1e400", b'{"a": -1e999}', b"\xef\xbb\xbf{}"])
)
def test_the_body_is_read_as_json_loads_reads_it_with_the_same_hooks(body: bytes) -> None:
    def stdlib(data: bytes) -> Any:
        return json.loads(
            data, parse_constant=json_body._refuse_constant, parse_float=json_body._finite_float
        )

    assert _read(json_body._loads, body) == _read(stdlib, body)
