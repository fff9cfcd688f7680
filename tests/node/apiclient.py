"""Clients of the API under test (the official OpenAI client, raw httpx) and the check
that an answer is OpenAI's error shape."""

from __future__ import annotations

import httpx
import openai

from aipg.node.http.app import ApiAddress

LLM = "aipg-demo-llm"


def client(address: ApiAddress, key: str = "free") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{address.url}/v1", api_key=key, max_retries=0)


def http(address: ApiAddress, **kwargs) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=address.url, timeout=30, **kwargs)


def assert_error(response: httpx.Response, status: int, *, param=None, code=None) -> dict:
    """The response is OpenAI's error shape with this status (and param / code)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error
