"""/docs and /redoc work on a machine without internet: every asset they load comes from the app.

The app runs with API keys, and nothing here sends one: the docs stay open, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.utils.processes import RedisServer
from worker.core.settings import Settings

# Attributes through which a page makes the browser fetch something.
FETCHING_ATTRIBUTES = {"src", "href", "spec-url"}
# Swagger UI's inline set-up names the OpenAPI document as `url: '/openapi.json'`.
INLINE_URL = re.compile(r"""\burl:\s*['"]([^'"]+)['"]""")


class AssetCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._inline: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in FETCHING_ATTRIBUTES and value]

    def handle_data(self, data: str) -> None:
        self.urls += INLINE_URL.findall(data)


@pytest.fixture(scope="module")
def docs_client(redis_server: RedisServer) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_server.url, api_keys="a-key-nobody-sends")
    with TestClient(create_app(settings)) as client:
        yield client


def page_assets(client: TestClient, page: str) -> list[str]:
    response = client.get(page)
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    collector = AssetCollector()
    collector.feed(response.text)
    return collector.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_of_the_docs_page_is_served_by_the_app(
    docs_client: TestClient, page: str
) -> None:
    urls = page_assets(docs_client, page)
    assert any(url.endswith(".js") for url in urls), urls  # the page's UI is among them
    assert "/openapi.json" in urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"{page} loads {url} from elsewhere"
        response = docs_client.get(url)
        assert response.status_code == 200, url
        assert response.content, url


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_page_names_no_other_host(docs_client: TestClient, page: str) -> None:
    text = docs_client.get(page).text
    assert "http://" not in text and "https://" not in text


def test_swagger_ui_gets_its_script_and_style(docs_client: TestClient) -> None:
    urls = page_assets(docs_client, "/docs")
    script = next(url for url in urls if url.endswith("swagger-ui-bundle.js"))
    style = next(url for url in urls if url.endswith("swagger-ui.css"))
    assert "javascript" in docs_client.get(script).headers["content-type"]
    assert docs_client.get(style).headers["content-type"].startswith("text/css")
    assert docs_client.get("/docs/oauth2-redirect").status_code == 200


def test_the_api_itself_still_asks_for_a_key(docs_client: TestClient) -> None:
    assert docs_client.get("/v1/tasks").status_code == 401
