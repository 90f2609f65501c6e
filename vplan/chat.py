"""An OpenAI-compatible chat endpoint: its settings and its client, shared by the LLM planner and the VLM reward.

The API key comes from the config or the environment variable `api_key_env`; it is not in the config's repr, and
`ChatEndpoint.scrub` takes it out of any text before that text is shown.
"""

from __future__ import annotations

import base64
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vplan.errors import UsageError, VplanWarning
from vplan.utils.settings import check_field_types

NO_KEY = "unused"  # sent to a local endpoint that needs no key (the client requires a string)
REDACTED = "<redacted>"
MAX_REPLY_BYTES = 8 * 2**20  # most of an HTTP reply read at all: an endpoint could send gigabytes in one
FAILURES_BEFORE_GIVING_UP = 3  # failed requests in a row (each after its retries): the endpoint is down
DETAIL_CHARS = 160  # most of a failed request's own words in its message: the advice after them must be shown


class ReplyTooLargeError(RuntimeError):
    """An HTTP reply longer than `MAX_REPLY_BYTES`, stopped while it was read."""


class ChatRequestError(RuntimeError):
    """A chat request failed: connection, timeout, HTTP status (after the client's retries). Its message shows the
    endpoint's own words with control characters as "?": they reach the terminal (a server's escape sequences
    could clear it or forge lines) and metrics.json."""

    def __init__(self, message: str) -> None:
        super().__init__("".join(c if c.isprintable() or c.isspace() else "?" for c in message))


class ChatReplyError(ChatRequestError):
    """The endpoint answered, but with no usable reply: the model refused, or its reply was cut."""


def short(value: Any, limit: int = 40) -> str:
    """`repr(value)`, cut to `limit` characters: a reply's text shown in a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def image_part(frame: np.ndarray, name: str = "frame") -> dict[str, Any]:
    """A uint8 (H, W, 3 or 4) frame as a chat message's image part (a base64 PNG data URL)."""
    import imageio.v3 as iio

    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"{name}: expected a uint8 (H, W, 3 or 4) image, got {frame.dtype} {frame.shape}")
    png = base64.b64encode(iio.imwrite("<bytes>", frame, extension=".png")).decode("ascii")
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}


@dataclass
class ChatEndpointConfig:
    """Where an OpenAI-compatible chat endpoint is and how it is asked."""

    base_url: str | None = field(
        default=None,
        metadata={"help": "The endpoint's base URL, e.g. http://localhost:8000/v1 (vLLM, llama.cpp, Ollama); "
                  "None: the OPENAI_BASE_URL environment variable, else OpenAI's API."},
    )
    model: str = field(default="gpt-4o-mini", metadata={"help": "Model name sent to the endpoint."})
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "API key; None: read the environment variable `api_key_env`. Never logged."},
    )
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the key."})
    timeout_s: float = field(
        default=30.0, metadata={"help": "Seconds the endpoint may stay silent: to connect, and between the bytes of "
                                "a reply (the client's timeout; a reply that keeps trickling is not cut off)."}
    )
    max_retries: int = field(
        default=2, metadata={"help": "Retries of a failed request (connection errors, timeouts, 408/409/429/5xx), "
                             "each after the wait a server's Retry-After asks (at most 60 s)."}
    )
    temperature: float | None = field(
        default=0.0, metadata={"help": "Sampling temperature (0: near-deterministic); None: not sent, the endpoint's "
                               "default (for models that take no other, such as OpenAI's reasoning models)."}
    )

    def __post_init__(self) -> None:
        check_field_types(self)  # configs built in Python: timeout_s="30" was a TypeError
        if self.api_key is not None and not isinstance(self.api_key, str):  # not quoted: it is the key
            raise ValueError(f"api_key: expected a string or None, got type {type(self.api_key).__name__} (quote a key "
                             "made only of digits)")
        if not self.model.strip():
            raise ValueError(f"model: expected a non-empty model name, got {self.model!r}")
        if self.base_url is not None and _holds_credentials(self.base_url):  # first: the next message quotes it
            raise ValueError("base_url: holds a user and password or a query (?...): the HTTP client logs the URL "
                             "of every request, and appends the API's path after a query, so neither can be passed "
                             "there; give the key as api_key or in the api_key_env variable")
        if self.base_url is not None and not _is_http_url(self.base_url):  # else every request fails alike
            raise ValueError(f"base_url: expected an http:// or https:// URL with a host (and a port from 1 to "
                             f"65535, no spaces) or None, got {self.base_url!r}")
        base = _api_base(self.base_url or "")
        if base is not None:  # the client adds the path: every request went to .../chat/completions/chat/completions
            raise ValueError(f"base_url: expected the API's base, which the client adds /chat/completions to; got "
                             f"{self.base_url!r}: pass {base!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env) or (
                _looks_like_a_key(self.api_key_env) and self.api_key_env not in os.environ):
            raise ValueError("api_key_env: expected the name of an environment variable (letters, digits and _, "
                             "e.g. OPENAI_API_KEY; a long unset one mixing capitals, small letters and digits reads "
                             "as a key); a key itself goes in api_key or in that variable")  # not quoted
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s: expected a positive number of seconds, got {self.timeout_s!r}")
        if not 0 <= self.max_retries <= 10:
            raise ValueError(f"max_retries: expected an int in [0, 10], got {self.max_retries!r}")
        if self.temperature is not None and (isinstance(self.temperature, bool) or not isinstance(
                self.temperature, (int, float)) or not 0 <= self.temperature <= 2):
            raise ValueError(f"temperature: expected a float in [0, 2] or None, got {self.temperature!r}")


MAX_RETRY_WAIT_S = 60.0  # the longest wait before a retry a server's Retry-After may ask (openai's own cap: 120 s)


def _bounded_client_class() -> Any:
    """`openai.OpenAI` with its wait before each retry capped at `MAX_RETRY_WAIT_S`, whatever the installed release
    allows (a server asking 75 s was waited out; at max_retries=10 one request could sleep 20 minutes)."""
    import openai

    class BoundedRetryWaits(openai.OpenAI):
        def _calculate_retry_timeout(self, *args: Any, **kwargs: Any) -> float:
            return min(super()._calculate_retry_timeout(*args, **kwargs), MAX_RETRY_WAIT_S)

    return BoundedRetryWaits


def _capped_http_client() -> Any:
    """The openai client's own HTTP client (its defaults, proxies from the environment included), but reading at
    most `MAX_REPLY_BYTES` of a reply, which it asks uncompressed (the client would read a reply whole, however
    long, before any length check here; a compressed one could be any size once decoded). Built on the HTTP
    package the installed openai uses (its `DefaultHttpxClient`'s base: httpx, or httpx2 in later releases);
    None, the client's default without the cap, where that package has another shape."""
    import contextlib
    import importlib

    import openai

    client_class = openai.DefaultHttpxClient
    base = next((c for c in client_class.__mro__ if c.__name__ == "Client"), None)
    if base is None or not all(hasattr(base, name) for name in ("_init_transport", "_init_proxy_transport")):
        return None
    http = importlib.import_module(base.__module__.partition(".")[0])

    class CappedStream(http.SyncByteStream):
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def __iter__(self) -> Any:
            read = 0
            for chunk in self.stream:
                read += len(chunk)
                if read > MAX_REPLY_BYTES:
                    raise ReplyTooLargeError(f"the reply is longer than {MAX_REPLY_BYTES} bytes; stopped reading it")
                yield chunk

        def close(self) -> None:
            self.stream.close()

    class CappedTransport(http.BaseTransport):
        """Wraps the transport (direct, or through a proxy) the client builds itself."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def handle_request(self, request: Any) -> Any:
            response = self.inner.handle_request(request)
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                response.close()
                raise ReplyTooLargeError(f"the reply came compressed ({encoding}), though asked for uncompressed: "
                                         "its size is not known until it is decoded")
            response.stream = CappedStream(response.stream)
            return response

        def close(self) -> None:
            self.inner.close()

    class CappedClient(client_class):  # type: ignore[misc, valid-type]
        def _init_transport(self, *args: Any, **kwargs: Any) -> Any:
            return CappedTransport(super()._init_transport(*args, **kwargs))

        def _init_proxy_transport(self, *args: Any, **kwargs: Any) -> Any:
            return CappedTransport(super()._init_proxy_transport(*args, **kwargs))

        def __del__(self) -> None:  # as openai's own client does: a planner never closed leaves no sockets
            with contextlib.suppress(Exception):
                if not self.is_closed:
                    self.close()

    return CappedClient(headers={"Accept-Encoding": "identity"})


def _is_http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    if any(c.isspace() for c in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port  # ValueError out of 0..65535
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0


def _looks_like_a_key(name: str) -> bool:
    """Whether a would-be variable name is more likely a key pasted in its place (hf_..., gsk_...: long, with
    capitals, small letters and digits; a 32-character hex one, as some providers issue: long with no "_"; as no
    variable name is): it would be written to config.yaml."""
    mixed = all(any(test(c) for c in name) for test in (str.isupper, str.islower, str.isdigit))
    return (len(name) >= 20 and mixed) or (len(name) >= 32 and "_" not in name)


def _unencrypted_to_another_machine(url: str) -> bool:
    """Whether `url` is plain http:// to a host other than this machine's loopback, or to any through a proxy from
    the environment (HTTP_PROXY, ALL_PROXY; the HTTP client uses it for loopback too, unless NO_PROXY names it)."""
    import ipaddress
    from urllib.parse import urlsplit
    from urllib.request import getproxies_environment, proxy_bypass_environment

    parts = urlsplit(url)
    if parts.scheme != "http":
        return False
    host = (parts.hostname or "").rstrip(".")
    proxies = getproxies_environment()
    if ("http" in proxies or "all" in proxies) and not proxy_bypass_environment(host, proxies):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host != "localhost"
    return not (address.is_loopback or address.is_unspecified)  # 0.0.0.0: this machine, as clients take it


def _api_base(url: str) -> str | None:
    """The API's base of a URL that holds the whole endpoint (`.../v1/chat/completions` → `.../v1`); None for any
    other (a base, as the client takes it)."""
    endpoint = re.search(r"/(chat/)?completions/*$", url)
    return url[:endpoint.start()] if endpoint else None


def _holds_credentials(url: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return bool(parts.username or parts.password or parts.query or "@" in parts.netloc)


def _settings_beside(key_setting: str) -> str:
    """The prefix of the settings beside an endpoint's api_key setting: "planner.llm." for "planner.llm.api_key"."""
    return key_setting.rpartition(".")[0] + "." if "." in key_setting else ""


def endpoint_key(config: ChatEndpointConfig, who: str, key_setting: str) -> tuple[str, str]:
    """The API key an endpoint of `config` is asked with (`NO_KEY` for one that needs none) and where it comes from
    (`key_setting` or the environment variable); a UsageError naming `who` where there is none for an endpoint that
    needs one, the key cannot go in an HTTP header, or OPENAI_BASE_URL is no URL. Torch-free: the CLI checks it
    before the models load (a missing key was said after ~10 s)."""
    environment_url = os.environ.get("OPENAI_BASE_URL")  # what the client uses when base_url is None
    if config.base_url is None and environment_url is not None and (  # set but empty: the client uses ""
            _holds_credentials(environment_url) or not _is_http_url(environment_url)):
        raise UsageError(f"{who}: the environment variable OPENAI_BASE_URL is not an http:// or https:// URL "
                         "with a host (and no user, password or query); correct or unset it")
    if config.base_url is None and environment_url and _api_base(environment_url) is not None:
        raise UsageError(f"{who}: the environment variable OPENAI_BASE_URL holds the whole endpoint "
                         f"({environment_url}), where the client adds /chat/completions to the API's base; set it to "
                         f"{_api_base(environment_url)}")
    # stripped before the fallback: a pasted newline, and a blank api_key does not hide the environment's
    key = ((config.api_key or "").strip() or os.environ.get(config.api_key_env, "")).strip()
    source = key_setting if (config.api_key or "").strip() else f"the environment variable {config.api_key_env}"
    if not all(" " < c < "\x7f" for c in key):  # HTTP headers take printable ASCII; the key unquoted
        raise UsageError(f"{who}: the API key in {source} holds a space, a control or a non-ASCII character; paste "
                         "it again")
    if key:
        return key, source
    if config.base_url is None and not environment_url:
        raise UsageError(f"{who} needs an API key: set the environment variable {config.api_key_env} (or "
                         f"{key_setting}), or point {_settings_beside(key_setting)}base_url at an endpoint that needs "
                         "none")
    return NO_KEY, source


class ChatEndpoint:
    """The `openai.OpenAI` client of a `ChatEndpointConfig` (made on first use), its key, and key scrubbing.

    `who` and `key_setting` name the user of the endpoint and its api_key setting in the error a missing key
    gives (e.g. "planner=llm", "planner.llm.api_key").
    """

    def __init__(self, config: ChatEndpointConfig, who: str, key_setting: str) -> None:
        self.config = config
        self.settings = _settings_beside(key_setting)
        self.api_key, self.key_source = endpoint_key(config, who, key_setting)
        self.failures_in_a_row = 0  # requests that failed since the last that was answered
        environment_url = os.environ.get("OPENAI_BASE_URL")  # what the client uses when base_url is None
        url = config.base_url if config.base_url is not None else environment_url
        if self.api_key != NO_KEY and url and _unencrypted_to_another_machine(url):
            warnings.warn(f"{who}: the API key in {self.key_source} goes to {url} unencrypted (http://, not on this "
                          "machine or through a proxy), where anyone on the way can read it; use https://, or an "
                          f"endpoint that needs no key (then set {self.settings}api_key_env to a variable that is not "
                          "set)", VplanWarning, stacklevel=3)
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The `openai.OpenAI` client (made on first use, reused until `close`)."""
        if self._client is None:
            self._client = _bounded_client_class()(api_key=self.api_key, base_url=self.config.base_url,
                                         timeout=self.config.timeout_s, max_retries=self.config.max_retries,
                                         http_client=_capped_http_client())
        return self._client

    def close(self) -> None:
        """Release the HTTP client (a later request makes a new one)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def given_up(self) -> bool:
        """Whether `FAILURES_BEFORE_GIVING_UP` requests in a row failed, so that `complete` asks no more."""
        return self.failures_in_a_row >= FAILURES_BEFORE_GIVING_UP

    def complete(self, messages: list[dict[str, Any]], **options: Any) -> Any:
        """The first choice's message content of one chat completion with the config's model and temperature
        (None if the reply has none); a `ChatRequestError` when the request fails (after the client's retries),
        the model refuses, the reply was cut at the model's token limit (its JSON would read as malformed), or
        the endpoint has `given_up`."""
        if self.given_up:  # each more would wait out its timeouts and retries (a dead LLM: ~90 s an episode)
            raise ChatRequestError(f"the endpoint failed {self.failures_in_a_row} requests in a row, so it is asked "
                                   "no more in this run (a new run, or a resumed one, asks it again)")
        if self.config.temperature is not None:
            options = {"temperature": self.config.temperature, **options}
        try:
            completion = self.client.chat.completions.create(model=self.config.model, messages=messages, **options)
        except Exception as error:  # the client's errors, and whatever a broken endpoint makes it raise
            self.failures_in_a_row += 1
            retries = self.config.max_retries
            raise ChatRequestError(
                f"the request to {self.client.base_url} failed, "
                + (f"with up to {retries} retries " if retries else "without retries (max_retries=0) ")
                + f"({self.scrub(_what_failed(error))[:DETAIL_CHARS]})"  # scrubbed first: a key cut in two
                + self._advice(error, "response_format" in options)                # would pass the callers' scrub
            ) from None
        self.failures_in_a_row = 0  # it answered (a refusal or a cut reply below says nothing of the endpoint)
        try:
            choice = completion.choices[0]
            message = choice.message
        except (AttributeError, IndexError, KeyError, TypeError):  # `choices` not a list of choices: no reply
            return None
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise ChatReplyError(f"the model refused: {short(refusal, 120)}")
        if getattr(choice, "finish_reason", None) == "length":
            raise ChatReplyError("the reply was cut at the model's token limit (finish_reason 'length')")
        return getattr(message, "content", None)

    def _advice(self, error: Exception, asked_format: bool) -> str:
        """"; " and the setting to look at after a failed request, where its kind says which ("" where none does):
        the client's "Connection error." or a bare 404 said neither."""
        import openai

        settings, text = self.settings, str(error).lower()
        url_from = (f"{settings}base_url" if self.config.base_url is not None else
                    "the environment variable OPENAI_BASE_URL")
        if isinstance(error, openai.APITimeoutError):
            advice = (f"the endpoint was silent for {self.config.timeout_s:g} s; raise {settings}timeout_s if it is "
                      "slow to answer")
        elif isinstance(error, openai.APIConnectionError):
            advice = f"check that an endpoint is running at {self.client.base_url} ({url_from})"
        elif isinstance(error, openai.NotFoundError):
            advice = f"check {url_from} (an OpenAI-compatible API's base usually ends in /v1) and {settings}model"
        elif isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            advice = (f"check the API key in {self.key_source}" if self.api_key != NO_KEY else "it asks for an API "
                      f"key, and none was sent: set {self.key_source} (or {settings}api_key)")
        elif isinstance(error, openai.BadRequestError) and asked_format and ("response_format" in text or
                                                                              "json_schema" in text):
            advice = f"an endpoint that takes no JSON schema: {settings}response_format=json_object (or none)"
        elif (isinstance(error, openai.BadRequestError) and "temperature" in text
              and self.config.temperature is not None):
            advice = f"a model that takes no temperature: {settings}temperature=null"
        else:
            return ""
        return f"; {advice}"

    def scrub(self, text: str) -> str:
        """`text` with the API key replaced by <redacted>, in any case (a reply's words are lowercased when shown)."""
        if self.api_key == NO_KEY:
            return text
        return re.sub(re.escape(self.api_key), REDACTED, text, flags=re.IGNORECASE)


def _what_failed(error: Exception) -> str:
    """A failed request's error and, where the client's own words hide it, its root cause's: "Connection error."
    alone could not tell a refused port from an unknown host ("[Errno 111] Connection refused"); a reply stopped
    for its length, its own words."""
    import openai

    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    too_large = next((c for c in chain if isinstance(c, ReplyTooLargeError)), None)
    said = f"{type(error).__name__}: {too_large or error}"
    root = chain[-1]
    if too_large is None and isinstance(error, openai.APIConnectionError) and root is not error and str(root):
        said += f"; {type(root).__name__}: {root}"
    return said
