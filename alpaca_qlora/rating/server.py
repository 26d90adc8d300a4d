"""The web server (Starlette on uvicorn): fixed routes only, each answering a bad request with an HTTP error.

- No route takes a path: the page serves the generation files and writes the ratings file named on the command
  line, and two files of this package (style.css, chat.js); nothing a browser sends is ever opened as a file.
- Bodies are read up to 64 KiB; forms are parsed here (application/x-www-form-urlencoded only: no uploads).
- A POST from another site's page (its Origin is not this server) is refused, and only the loopback names are
  accepted as Host while the server is bound to loopback, so a web page elsewhere cannot rate in your name.
- Any other failure of a request is logged and answered 500; the server goes on.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import traceback
from importlib import resources
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from ..cli import fail
from . import pages
from .checks import RequestError, annotator_name, bad_request, shown_value, whole_number
from .pairs import BlindSet
from .store import CHOICES, RatingsStore, rating_row

MAX_BODY_BYTES = 64 * 1024
LISTEN_BACKLOG = 2048  # uvicorn's default
STATIC_TYPES = {"style.css": "text/css; charset=utf-8", "chat.js": "text/javascript; charset=utf-8"}
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # not no-referrer: Chromium then sends "Origin: null" with our own forms
    (b"cache-control", b"no-store"),
]

Handler = Callable[[Request], Awaitable[Response]]


# ---------------------------------------------------------------- shared pieces


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def static_files() -> dict[str, bytes]:
    folder = resources.files("alpaca_qlora.rating") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_TYPES}


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and whole_number(declared, MAX_BODY_BYTES + 1) is None:
        raise RequestError(413, f"a request body is at most {MAX_BODY_BYTES} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise RequestError(413, f"a request body is at most {MAX_BODY_BYTES} bytes")
    return body


def check_same_origin(request: Request) -> None:
    """Refuse a POST sent by a page of another origin (a browser always says where a POST comes from)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        raise RequestError(403, f"a request from {origin} is refused: only this page may rate")


def check_content_type(request: Request, expected: str) -> None:
    given = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if given != expected:
        raise RequestError(415, f"expected a body of type {expected}, got {given or 'none'}")


async def json_body(request: Request) -> Any:
    check_same_origin(request)
    check_content_type(request, "application/json")
    try:
        return json.loads((await read_body(request)).decode("utf-8"))
    except ValueError as error:  # not UTF-8, not JSON, or a number of more digits than Python converts
        reason = str(error).split(";")[0]  # what follows ';' in the last one is advice to programmers
        raise bad_request(f"the body is not JSON ({reason})") from None


async def form_body(request: Request) -> dict[str, str]:
    """A urlencoded form with each field once."""
    check_same_origin(request)
    check_content_type(request, "application/x-www-form-urlencoded")
    try:
        fields = parse_qs((await read_body(request)).decode("ascii"), keep_blank_values=True, strict_parsing=True,
                          errors="strict", max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as error:
        raise bad_request(f"the form is malformed ({error})") from None
    repeated = [name for name, values in fields.items() if len(values) > 1]
    if repeated:
        raise bad_request(f"field '{repeated[0]}' is given more than once")
    return {name: values[0] for name, values in fields.items()}


def handle_errors(handler: Handler, html: bool) -> Handler:
    """A refused request becomes its HTTP error (a page or {"error": ...}); any other failure a logged 500."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except RequestError as error:
            status, message, back = error.status, str(error), error.back
        except Exception as error:  # the server must outlive any one request
            traceback.print_exc(file=sys.stderr)
            status, message, back = 500, f"internal error: {type(error).__name__}: {error}", "/"
        if html:
            return HTMLResponse(pages.message_page(status, message, back), status_code=status)
        return JSONResponse({"error": message}, status_code=status)

    return wrapped


class SecurityHeaders:
    """ASGI middleware: no framing by other sites, no inline or foreign scripts, nothing cached."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(routes: list[Route], host: str) -> Starlette:
    files = static_files()

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files:  # a fixed set of names: never a path
            raise RequestError(404, f"no such file: {name}")
        return Response(files[name], media_type=STATIC_TYPES[name])

    async def no_icon(request: Request) -> Response:
        return Response(status_code=204)

    allowed_hosts = LOOPBACK_NAMES if is_loopback(host) else ["*"]
    return Starlette(
        routes=[*routes, Route("/static/{name}", handle_errors(static, html=False)), Route("/favicon.ico", no_icon)],
        middleware=[Middleware(SecurityHeaders), Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)],
    )


def redirect(url: str) -> Handler:
    async def go(request: Request) -> Response:
        return RedirectResponse(url, status_code=303)

    return go


# ---------------------------------------------------------------- blind


def blind_routes(blind: BlindSet, store: RatingsStore) -> list[Route]:
    async def show(request: Request) -> Response:
        if "annotator" not in request.query_params:
            progress = {name: blind.progress(name, store.rated_by(name)) for name in store.annotators()}
            return HTMLResponse(pages.blind_start(blind, {k: v for k, v in progress.items() if v[0]}))
        annotator = annotator_name(request.query_params["annotator"], pages.MAX_ANNOTATOR)
        rated = store.rated_by(annotator)
        done, total = blind.progress(annotator, rated)
        shown = blind.next_item(annotator, rated)
        if shown is None:
            return HTMLResponse(pages.blind_done(annotator, total))
        return HTMLResponse(pages.blind_pair(blind, annotator, shown, done, total))

    async def rate(request: Request) -> Response:
        form = await form_body(request)
        annotator = annotator_name(form.get("annotator"), pages.MAX_ANNOTATOR)
        item_text, choice, comment = form.get("item", ""), form.get("choice"), form.get("comment", "")
        item_number = whole_number(item_text, len(blind.items))
        if item_number is None:
            raise bad_request(f"field 'item' must be a pair number below {len(blind.items)}, "
                              f"got {shown_value(item_text)}")
        if choice not in CHOICES:
            raise bad_request(f"field 'choice' must be one of {', '.join(CHOICES)}, got {choice!r}")
        if len(comment) > pages.MAX_COMMENT:
            raise bad_request(f"field 'comment' is longer than {pages.MAX_COMMENT} characters")
        shown = blind.shown(annotator, item_number)
        item = shown.item
        sides = {"A": blind.files[shown.a].path, "B": blind.files[shown.b].path}
        row = rating_row(blind.answer(item.first, item).prompt_id, blind.pair_files(item), sides, choice,
                         comment.strip(), annotator)
        if not await run_in_threadpool(store.append, row):  # flushed and fsynced before the page moves on
            raise RequestError(409, "you have already rated this pair (in another tab?); the next pair is waiting",
                               back=f"/blind?annotator={quote(annotator)}")
        return RedirectResponse(f"/blind?annotator={quote(annotator)}", status_code=303)

    return [
        Route("/", redirect("/blind")),
        Route("/blind", handle_errors(show, html=True)),
        Route("/blind/rate", handle_errors(rate, html=True), methods=["POST"]),
    ]


# ---------------------------------------------------------------- chat


def chat_routes(session, model_label: str) -> list[Route]:
    page_html = pages.chat_page(model_label, session.defaults, str(session.ratings.path))

    async def show(request: Request) -> Response:
        return HTMLResponse(page_html)

    async def generate(request: Request) -> Response:
        body = await json_body(request)
        _, events = session.stream(body)  # a bad request fails here, before anything streams

        async def lines():  # a client that leaves cancels this iteration, which stops the answer
            async for event in events:
                yield json.dumps(event, ensure_ascii=False) + "\n"

        return StreamingResponse(lines(), media_type="application/x-ndjson")

    async def rate(request: Request) -> Response:
        body = await json_body(request)
        return JSONResponse(await run_in_threadpool(session.rate, body))

    return [
        Route("/", redirect("/chat")),
        Route("/chat", handle_errors(show, html=True)),
        Route("/chat/generate", handle_errors(generate, html=False), methods=["POST"]),
        Route("/chat/rate", handle_errors(rate, html=False), methods=["POST"]),
    ]


# ---------------------------------------------------------------- serving


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts: a taken port is a one-line error naming the flag.

    It listens at once, so a connection made as soon as the address is printed waits in the backlog until the
    server accepts it, instead of being refused."""
    if not 0 <= port <= 65535:
        fail(f"--port must be from 0 to 65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        fail(f"--host {host}: not an address of this machine ({error.strerror})")
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        fail(f"--host {host} --port {port}: cannot listen there ({error.strerror})")
    sock.set_inheritable(True)
    return sock


def serve(app: Starlette, host: str, port: int, path: str, note: str) -> None:
    import uvicorn

    sock = bind(host, port)
    if not is_loopback(host):
        print(f"warning: --host {host}: the page has no login; anyone who can reach this machine on port "
              f"{sock.getsockname()[1]} can read the answers and add ratings", file=sys.stderr)
    shown_host = f"[{host}]" if ":" in host else host
    print(f"rating page: http://{shown_host}:{sock.getsockname()[1]}{path} ({note}); Ctrl-C stops it", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])
