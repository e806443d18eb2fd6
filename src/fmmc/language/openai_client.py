"""A small, generic client for OpenAI-compatible chat completions (OpenAI, vLLM, Ollama, LM Studio, ...).

    >>> client = OpenAIChatClient("gpt-4o-mini")        # base URL / key from the environment
    >>> client.chat([{"role": "user", "content": [image_content(img), {"type": "text", "text": "Material?"}]}],
    ...             temperature=0, max_tokens=20)        # doctest: +SKIP
    'Brushed aluminium.'

Base URL: the ``base_url`` argument, else ``FMMC_OPENAI_BASE_URL``, else ``OPENAI_BASE_URL``, else
https://api.openai.com/v1. Key: the ``api_key`` argument, else ``OPENAI_API_KEY``; none is needed by local
servers; OpenAI's hosted API without a key is refused before any request. Connect errors, timeouts, HTTP
429 (``Retry-After`` honoured) and 5xx are retried with exponential backoff and jitter; other 4xx fail at
once. The key is never logged nor put in an error. Thread-safe: one client can serve many threads.

Circuit breaker: after ``max_consecutive_failures`` (3) connection failures or timeouts in a row, counted
over all requests and threads, the client raises :class:`EndpointUnavailableError` at once, and keeps
doing so for ``breaker_cooldown`` seconds, instead of retrying every request of a run against a dead
endpoint. Any HTTP answer resets the count. ``describe_regions`` stops a run on this error.
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import logging
import os
import random
import threading
import time
from typing import Any
from urllib.parse import urlparse

import httpx
from PIL import Image

from fmmc.language.describers import DescriberError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
HOSTED_HOSTS = ("api.openai.com",)  # endpoints that always need a key
MAX_CONNECT_TIMEOUT = 10.0  # a server that does not accept a connection in this long is not coming
MAX_RETRY_AFTER = 120.0  # never sleep longer than this on a server's say-so
_HINTS = {
    401: "check OPENAI_API_KEY (or pass api_key=)",
    403: "the key lacks access to this model",
    404: "check the base URL (it usually ends in /v1) and the model name",
    413: "the request is too large; send smaller images",
}

__all__ = ["DescriberError", "EndpointUnavailableError", "OpenAIChatClient", "image_content", "resolve_base_url"]


class EndpointUnavailableError(DescriberError):
    """The endpoint cannot be used at all (down, or a hosted API without a key): retrying more requests
    cannot help, so runs over many regions stop on it (``stops_run``) instead of failing each region."""

    stops_run = True


def is_hosted(base_url: str) -> bool:
    """Whether ``base_url`` is OpenAI's hosted API (which needs a key), not a local or self-hosted server."""
    return (urlparse(base_url).hostname or "").lower() in HOSTED_HOSTS


def resolve_base_url(base_url: str | None = None) -> str:
    url = base_url or os.environ.get("FMMC_OPENAI_BASE_URL") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    return url.rstrip("/")


def image_content(img: Image.Image, max_side: int | None = 1024, quality: int = 90,
                  detail: str | None = None) -> dict[str, Any]:
    """An ``image_url`` message part holding ``img`` as a base64 JPEG data URL (long side <= ``max_side``)."""
    img = img.convert("RGB")
    if max_side is not None and max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, subsampling=0)  # 4:4:4 keeps thin red outlines red
    part: dict[str, Any] = {"url": "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")}
    if detail is not None:
        part["detail"] = detail
    return {"type": "image_url", "image_url": part}


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms``, ``Retry-After`` seconds or HTTP date)."""
    ms = response.headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        msg = err.get("message", err) if isinstance(err, dict) else err
        return str(msg)[:300]
    except ValueError:
        return response.text[:300]


class OpenAIChatClient:
    """POSTs to ``{base_url}/chat/completions`` and returns the first choice's text."""

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_consecutive_failures: int = 3,
        breaker_cooldown: float = 30.0,
    ) -> None:
        if not model:
            raise ValueError("model must be given, e.g. OpenAIChatClient('gpt-4o-mini')")
        self.model = model
        self.base_url = resolve_base_url(base_url)
        self.endpoint = f"{self.base_url}/chat/completions"
        self.max_retries = max(0, int(max_retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.max_consecutive_failures = max(1, int(max_consecutive_failures))
        self.breaker_cooldown = breaker_cooldown
        self._failures = 0  # connection failures / timeouts in a row, over all threads
        self._open_until = 0.0  # time.monotonic() until which requests are refused at once
        self._open_reason = ""  # why the breaker opened, as the thread that opened it saw it
        self._breaker_lock = threading.Lock()
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY") or None
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        self.connect_timeout = min(timeout, MAX_CONNECT_TIMEOUT)
        self._http = httpx.Client(timeout=httpx.Timeout(timeout, connect=self.connect_timeout), headers=headers)

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatClient(model={self.model!r}, base_url={self.base_url!r}, key={'set' if self._api_key else 'none'})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        # Servers may echo request headers in error bodies; a very short "key" is not worth mangling text for.
        return text.replace(self._api_key, "***") if self._api_key and len(self._api_key) >= 4 else text

    def _fail(self, problem: str) -> DescriberError:
        # Raised without chaining on purpose: httpx errors carry the request, whose headers hold the key.
        return DescriberError(self._redact(f"chat endpoint {self.endpoint} (model {self.model!r}): {problem}"))

    def _delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)

    def check_usable(self) -> None:
        """Raise :class:`EndpointUnavailableError` (no request sent) for OpenAI's hosted API without a key."""
        if self._api_key is None and is_hosted(self.base_url):
            raise EndpointUnavailableError(
                f"chat endpoint {self.endpoint} (model {self.model!r}) is OpenAI's hosted API and no key is set: "
                "export OPENAI_API_KEY (or pass api_key=), or point base_url (FMMC_OPENAI_BASE_URL / "
                "OPENAI_BASE_URL) at a local OpenAI-compatible server such as vLLM or Ollama, which needs no key"
            )

    def _check_breaker(self) -> None:
        with self._breaker_lock:
            left = self._open_until - time.monotonic()
            reason = self._open_reason
        if left > 0:
            raise self._down(f"{reason}; not trying again for {left:.0f} s")

    def _connection_failed(self, problem: str, attempt: int) -> None:
        """Count one connection failure/timeout; open the breaker (and raise) at the limit.

        Threads that fail while another thread's failure has already opened the breaker raise that
        thread's reason, so every thread of a run reports the same count (the limit), not its own
        place in the race.
        """
        with self._breaker_lock:
            if self._open_until > time.monotonic():
                reason = self._open_reason
            else:
                self._failures += 1
                reason = ""
                if self._failures >= self.max_consecutive_failures:
                    self._open_until = time.monotonic() + self.breaker_cooldown
                    reason = self._open_reason = (
                        f"{problem}; {self._failures} connection failures or timeouts in a row "
                        f"({attempt} attempt{'s' if attempt > 1 else ''} for this request)")
        if reason:
            raise self._down(reason)

    def _answered(self) -> None:
        with self._breaker_lock:
            self._failures = 0
            self._open_until = 0.0
            self._open_reason = ""

    def _down(self, problem: str) -> EndpointUnavailableError:
        return EndpointUnavailableError(self._redact(
            f"chat endpoint {self.endpoint} (model {self.model!r}) is not reachable: {problem}. Stopping instead of "
            f"trying every request: start the server, or point base_url (FMMC_OPENAI_BASE_URL / OPENAI_BASE_URL) "
            f"at one that runs"
        ))

    def chat(self, messages: list[dict[str, Any]], **params: Any) -> str:
        """Send ``messages`` (plus ``temperature``, ``max_tokens``, ...) and return the reply's text."""
        self.check_usable()
        body = {"model": self.model, "messages": messages, **params}
        attempts = self.max_retries + 1
        last = ""
        for attempt in range(attempts):
            wait: float | None = None
            self._check_breaker()
            try:
                response = self._http.post(self.endpoint, json=body)
            except httpx.TimeoutException as e:
                limit = self.connect_timeout if isinstance(e, httpx.ConnectTimeout) else self.timeout
                last = f"timed out after {limit:g} s ({type(e).__name__})"
                self._connection_failed(last, attempt + 1)
            except httpx.TransportError as e:  # connect errors, dropped connections
                last = f"connection failed ({type(e).__name__}: {self._redact(str(e))[:200]})"
                self._connection_failed(last, attempt + 1)
            else:
                self._answered()
                status = response.status_code
                if status == 200:
                    return self._parse(response)
                last = f"HTTP {status}: {self._redact(_server_message(response))}"
                if status != 429 and status < 500:
                    hint = _HINTS.get(status)
                    raise self._fail(last + (f" ({hint})" if hint else ""))
                if status == 429:
                    wait = _retry_after(response)
            if attempt + 1 < attempts:
                delay = min(wait, MAX_RETRY_AFTER) if wait is not None else self._delay(attempt)
                log.warning("chat endpoint %s (model %r): %s; retry %d/%d in %.2f s", self.endpoint, self.model,
                            last, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
        raise self._fail(f"{last}; gave up after {attempts} attempt{'s' if attempts > 1 else ''}")

    def _parse(self, response: httpx.Response) -> str:
        try:
            data = response.json()
        except (ValueError, json.JSONDecodeError):
            raise self._fail(f"the reply is not valid JSON: {response.text[:200]!r}") from None
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise self._fail(f"the reply has no choices[0].message.content: {str(data)[:200]}") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            refusal = data["choices"][0]["message"].get("refusal")
            raise self._fail(f"the reply has no text content{f' (refusal: {refusal})' if refusal else ''}")
        return content
