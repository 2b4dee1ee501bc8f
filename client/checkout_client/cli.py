"""The `checkout` command line: upload, follow and inspect videos, operate the service.

Human output by default (a progress bar and tables from rich), `--json` for scripts. Errors
are one line on stderr — the server's Russian message and its reason — never a traceback
(set CHECKOUT_DEBUG=1 to get one). Exit codes scripts can rely on are the EXIT_* constants
below and are listed by `checkout --help`.

Text from users and the server (filenames, messages, ids, the address) is printed as it is:
rich reads no markup (`[link=...]`, `[bold]`) and no emoji codes (`:warning:`) in it. A token
(`CHECKOUT_TOKEN`, `--admin-token`, `CHECKOUT_ADMIN_TOKEN`) is sent over TLS only.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from ._channel import ADDR_ENV, DEFAULT_ADDR, RetryPolicy
from ._client import DEFAULT_CHUNK_BYTES, DEFAULT_TIMEOUT_S, AsyncCheckoutClient
from ._errors import CheckoutError
from ._models import Operation, Result, StatusUpdate, UploadProgress

EXIT_OK = 0
EXIT_ERROR = 1  # anything not listed below (INTERNAL, UNKNOWN, ...)
EXIT_USAGE = 2  # bad command line; a token without TLS; `cleanup` without --yes or a token
EXIT_NOT_FOUND = 3  # NOT_FOUND: no such event or video
EXIT_INVALID = 4  # the input was refused: INVALID_ARGUMENT, FAILED_PRECONDITION, ...
EXIT_UNAVAILABLE = 5  # UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED; health degraded
EXIT_DENIED = 6  # UNAUTHENTICATED, PERMISSION_DENIED
EXIT_FAILED = 7  # the event's processing ended with status `failed`
EXIT_INTERRUPTED = 130  # Ctrl-C

_EXIT_BY_CODE = {
    "NOT_FOUND": EXIT_NOT_FOUND,
    "INVALID_ARGUMENT": EXIT_INVALID,
    "FAILED_PRECONDITION": EXIT_INVALID,
    "OUT_OF_RANGE": EXIT_INVALID,
    "ALREADY_EXISTS": EXIT_INVALID,
    "UNAVAILABLE": EXIT_UNAVAILABLE,
    "DEADLINE_EXCEEDED": EXIT_UNAVAILABLE,
    "RESOURCE_EXHAUSTED": EXIT_UNAVAILABLE,
    "UNAUTHENTICATED": EXIT_DENIED,
    "PERMISSION_DENIED": EXIT_DENIED,
}

ADMIN_TOKEN_ENV = "CHECKOUT_ADMIN_TOKEN"
TOKEN_ENV = "CHECKOUT_TOKEN"

EPILOG = f"""\
environment:
  {ADDR_ENV}        server address (default {DEFAULT_ADDR})
  {TOKEN_ENV}       bearer token for every call (needs --tls)
  {ADMIN_TOKEN_ENV} admin token for `cleanup` (needs --tls; else the key in {TOKEN_ENV})

exit codes:
  {EXIT_OK}   ok
  {EXIT_ERROR}   other error (e.g. INTERNAL)
  {EXIT_USAGE}   usage: bad arguments, a token without TLS, `cleanup` not confirmed or without
      a token
  {EXIT_NOT_FOUND}   not found (NOT_FOUND, e.g. EVENT_NOT_FOUND)
  {EXIT_INVALID}   invalid input (INVALID_ARGUMENT, FAILED_PRECONDITION; unreadable file)
  {EXIT_UNAVAILABLE}   unavailable: server or a dependency down, deadline passed; health degraded
  {EXIT_DENIED}   not allowed (UNAUTHENTICATED, PERMISSION_DENIED)
  {EXIT_FAILED}   the event's processing failed (`watch`, `upload --watch`)
  {EXIT_INTERRUPTED} interrupted
"""


class CliError(Exception):
    """A failure the CLI reports itself: one line, an exit code."""

    def __init__(self, message: str, *, reason: str, exit_code: int) -> None:
        super().__init__(message)
        self.message, self.reason, self.exit_code = message, reason, exit_code


def exit_code_for(error: CheckoutError) -> int:
    """The documented exit code for an SDK error."""
    return _EXIT_BY_CODE.get(error.code.name, EXIT_ERROR)


# --- output -----------------------------------------------------------------------------------


class Output:
    """Where results go: JSON on stdout, or text and tables for people."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        # No markup, emoji codes or highlighting in anything printed: filenames, messages and
        # ids come from users and the server, and `[link=...]` must not become a link.
        plain: dict[str, Any] = {"markup": False, "emoji": False, "highlight": False}
        self.out = Console(soft_wrap=True, **plain)
        if not self.out.is_terminal:
            self.out = Console(soft_wrap=True, width=200, **plain)
        self.err = Console(stderr=True, **plain)

    def emit(self, value: Any) -> None:
        """One JSON document on one line."""
        sys.stdout.write(json.dumps(value, ensure_ascii=False) + "\n")
        sys.stdout.flush()

    def fields(self, values: dict[str, Any]) -> None:
        width = max(len(k) for k in values)
        for key, value in values.items():
            self.out.print(f"{key:<{width}}  {_human(value)}", markup=False)

    def error(self, message: str, reason: str, code: str) -> None:
        if self.json:
            record = {"error": {"code": code, "reason": reason, "message": message}}
            sys.stderr.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            line = f"checkout: ошибка: {message}" + (f" ({reason})" if reason else "")
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _human(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == "":
        return "-"
    return str(value)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _when(operation: Operation) -> str:
    moment = operation.updated_at or operation.created_at
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


# --- commands ---------------------------------------------------------------------------------


async def cmd_upload(client: AsyncCheckoutClient, args: argparse.Namespace, out: Output) -> int:
    path: Path = args.file
    show_bar = not args.no_progress and out.err.is_terminal
    progress = Progress(
        TextColumn("{task.description}", markup=False),  # the file's name, as it is
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=out.err,
        disable=not show_bar,
    )
    task: TaskID = progress.add_task(path.name, total=args.file_size)

    resumed: list[int] = []

    def on_progress(p: UploadProgress) -> None:
        label = path.name if p.attempt == 1 else f"{path.name} (попытка {p.attempt})"
        if p.resumed_from_bytes:
            label += f" (продолжено с {_size(p.resumed_from_bytes)})"
            if not resumed or resumed[-1] != p.resumed_from_bytes:
                resumed.append(p.resumed_from_bytes)
                if not show_bar and not out.json:  # no bar: say it once per resume
                    out.err.print(
                        f"resuming {path.name} at byte {p.resumed_from_bytes}", markup=False
                    )
        progress.update(task, completed=p.sent_bytes, total=p.total_bytes, description=label)

    started = time.monotonic()
    try:
        with progress:
            upload = await client.upload(
                path,
                bucket=args.bucket,
                chunk_size=args.chunk_size,
                on_progress=on_progress,
                resumable=True if args.resume else None,
                idempotency_key=resume_key(path) if args.resume else None,
            )
    except OSError as e:
        raise CliError(
            f"Не удалось прочитать файл {path}: {e.strerror or e}",
            reason="FILE_UNREADABLE",
            exit_code=EXIT_INVALID,
        ) from e
    elapsed = time.monotonic() - started
    record: dict[str, Any] = {"upload": upload.to_dict()}
    if not out.json:
        out.out.print(
            f"uploaded {path.name}: {_size(upload.size_bytes)} in {elapsed:.1f} s", markup=False
        )
        out.fields(
            {k: v for k, v in upload.to_dict().items() if k not in {"idempotency_key", "attempts"}}
        )
    if not args.watch:
        if out.json:
            out.emit(upload.to_dict())
        return EXIT_OK
    final = await _follow(client, upload.event_id, out)
    result = await client.result(upload.event_id)
    if out.json:
        record["status"] = final.to_dict() if final else None
        record["result"] = result.to_dict()
        out.emit(record)
    else:
        _print_result(out, result)
    return EXIT_FAILED if final is not None and final.status == "failed" else EXIT_OK


async def _follow(client: AsyncCheckoutClient, event_id: str, out: Output) -> StatusUpdate | None:
    last: StatusUpdate | None = None
    async for update in client.watch(event_id):
        last = update
        if not out.json:
            when = update.updated_at.strftime("%H:%M:%S") if update.updated_at else "--:--:--"
            line = f"{when}  {update.status}" + (f"  {update.error}" if update.error else "")
            out.out.print(line, markup=False)
    return last


async def cmd_watch(client: AsyncCheckoutClient, args: argparse.Namespace, out: Output) -> int:
    last: StatusUpdate | None = None
    if out.json:
        async for update in client.watch(args.event_id):
            last = update
            out.emit(update.to_dict())  # one JSON object per line, as they come
    else:
        last = await _follow(client, args.event_id, out)
    return EXIT_FAILED if last is not None and last.status == "failed" else EXIT_OK


async def cmd_status(client: AsyncCheckoutClient, args: argparse.Namespace, out: Output) -> int:
    if args.event_id:
        operation = await client.status(args.event_id)
        if out.json:
            out.emit(operation.to_dict())
        else:
            out.fields(operation.to_dict())
        return EXIT_OK
    operations: list[Operation] = []
    total = 0
    token = ""
    while True:
        page = await client.list_page(
            status=args.status, page_size=args.page_size, page_token=token
        )
        total = page.total
        operations.extend(page.operations)
        token = page.next_page_token
        if not token or (args.limit and len(operations) >= args.limit):
            break
    if args.limit:
        operations = operations[: args.limit]
    if out.json:
        out.emit([o.to_dict() for o in operations])
        return EXIT_OK
    table = Table(title=None, show_edge=False, header_style="bold")
    table.add_column("event_id", no_wrap=True, min_width=36)
    table.add_column("status", no_wrap=True)
    table.add_column("filename", overflow="ellipsis", max_width=40)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("updated (UTC)", no_wrap=True)
    table.add_column("error", overflow="fold")
    for o in operations:
        # Text cells: rich reads markup in a str cell whatever the console says.
        cells = (o.event_id, o.status, o.filename or "-", _size(o.size_bytes), _when(o), o.error)
        table.add_row(*(Text(cell or "") for cell in cells))
    out.out.print(table)
    counted = f"of {total}" if total >= 0 else "(too many stored to count)"
    out.out.print(f"{len(operations)} {counted}", markup=False)
    return EXIT_OK


def _print_result(out: Output, result: Result) -> None:
    out.fields({"event_id": result.event_id, "status": result.status})
    if result.prediction is None:
        out.out.print(f"no prediction yet (status: {result.status})", markup=False)
    else:
        out.out.print_json(data=result.prediction)


async def cmd_result(client: AsyncCheckoutClient, args: argparse.Namespace, out: Output) -> int:
    result = await client.result(args.event_id)
    if out.json:
        out.emit(result.to_dict())
    else:
        _print_result(out, result)
    return EXIT_OK


async def cmd_download(client: AsyncCheckoutClient, args: argparse.Namespace, out: Output) -> int:
    path = args.output or Path(f"{args.event_id}.mp4")
    size = await client.download(args.event_id, path)
    if out.json:
        out.emit({"event_id": args.event_id, "path": str(path), "size_bytes": size})
    else:
        out.out.print(f"saved {path}: {size:,} bytes", markup=False)
    return EXIT_OK


async def cmd_request(client: AsyncCheckoutClient, args: argparse.Namespace, out: Output) -> int:
    request = await client.request(args.video_id, bucket=args.bucket)
    if out.json:
        out.emit(request.to_dict())
    else:
        out.fields(request.to_dict())
    return EXIT_OK


async def cmd_cleanup(client: AsyncCheckoutClient, args: argparse.Namespace, out: Output) -> int:
    # The admin token, or else the caller's own key (an `admin` key when the server
    # authenticates every call).
    token = args.admin_token or os.environ.get(ADMIN_TOKEN_ENV, "") or os.environ.get(TOKEN_ENV, "")
    if not token:
        raise CliError(
            f"Нужен токен администратора: --admin-token, {ADMIN_TOKEN_ENV} или ключ admin в "
            f"{TOKEN_ENV}",
            reason="ADMIN_TOKEN_REQUIRED",
            exit_code=EXIT_USAGE,
        )
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(
                "Очистка удаляет все видео и события: подтвердите флагом --yes",
                reason="CONFIRMATION_REQUIRED",
                exit_code=EXIT_USAGE,
            )
        answer = out.err.input(
            f"Удалить ВСЕ видео и события на {client.address}? Введите 'yes': ",
            markup=False,  # the address is the user's text
            emoji=False,
        )
        if answer.strip().lower() != "yes":
            raise CliError("Отменено", reason="NOT_CONFIRMED", exit_code=EXIT_USAGE)
    report = await client.cleanup(admin_token=token)
    if out.json:
        out.emit(report.to_dict())
    else:
        out.fields(report.to_dict())
    return EXIT_OK


async def cmd_health(client: AsyncCheckoutClient, args: argparse.Namespace, out: Output) -> int:
    health = await client.health()
    if out.json:
        out.emit(health.to_dict())
    else:
        out.fields({"status": health.status, **health.dependencies})
    return EXIT_OK if health.ok else EXIT_UNAVAILABLE


COMMANDS = {
    "upload": cmd_upload,
    "status": cmd_status,
    "watch": cmd_watch,
    "result": cmd_result,
    "download": cmd_download,
    "request": cmd_request,
    "cleanup": cmd_cleanup,
    "health": cmd_health,
}


# --- arguments --------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _connection_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Accepted before and after the command; after it they must not reset what came before.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    group = parser.add_argument_group("connection")
    group.add_argument(
        "--addr",
        default=default(None),
        help=f"server host:port (default ${ADDR_ENV} or {DEFAULT_ADDR})",
    )
    group.add_argument(
        "--timeout",
        type=float,
        default=default(DEFAULT_TIMEOUT_S),
        help=f"deadline of each unary call in seconds (default {DEFAULT_TIMEOUT_S:g})",
    )
    group.add_argument("--tls", action="store_true", default=default(False), help="use TLS")
    group.add_argument(
        "--ca-cert", default=default(None), help="PEM file of root certificates (implies --tls)"
    )
    group.add_argument(
        "--cert",
        default=default(None),
        help="PEM file of the client certificate chain, for mTLS (needs --key; implies --tls)",
    )
    group.add_argument(
        "--key", default=default(None), help="PEM file of the client certificate's private key"
    )
    group.add_argument("--json", action="store_true", default=default(False), help="JSON output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="checkout",
        description="Upload videos to checkout and follow their processing.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    upload = commands.add_parser("upload", parents=[common], help="upload a video")
    upload.add_argument("file", metavar="FILE")
    upload.add_argument("--bucket", default="", help="target bucket (default: the server's)")
    upload.add_argument("--watch", action="store_true", help="then follow it to ready/failed")
    upload.add_argument("--no-progress", action="store_true", help="no progress bar")
    upload.add_argument(
        "--resume",
        action="store_true",
        help="resumable: an upload of this file broken off before (same path, size and "
        "modification time) goes on from what the server stored",
    )
    upload.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_BYTES,
        help=f"bytes per message (default {DEFAULT_CHUNK_BYTES // 1024} KiB)",
    )

    status = commands.add_parser(
        "status", parents=[common], help="one event's status, or a table of events"
    )
    status.add_argument("event_id", metavar="EVENT_ID", nargs="?", default="")
    status.add_argument("--status", default="", help="only events with this status")
    status.add_argument(
        "--limit", type=_positive_int, default=50, help="at most this many (0: all; default 50)"
    )
    status.add_argument("--page-size", type=_positive_int, default=0, help=argparse.SUPPRESS)

    watch = commands.add_parser("watch", parents=[common], help="follow an event live")
    watch.add_argument("event_id", metavar="EVENT_ID")

    result = commands.add_parser("result", parents=[common], help="an event's detection result")
    result.add_argument("event_id", metavar="EVENT_ID")

    download = commands.add_parser(
        "download", parents=[common], help="save an event's stored video to a file"
    )
    download.add_argument("event_id", metavar="EVENT_ID")
    download.add_argument(
        "-o", "--output", type=Path, help="where to write it (default: EVENT_ID.mp4)"
    )

    request = commands.add_parser("request", parents=[common], help="process a stored video again")
    request.add_argument("video_id", metavar="VIDEO_ID")
    request.add_argument("--bucket", default="", help="its bucket (default: the server's)")

    cleanup = commands.add_parser(
        "cleanup", parents=[common], help="delete every video and event (admin)"
    )
    cleanup.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    cleanup.add_argument(
        "--admin-token",
        default="",
        help=f"admin token, sent over TLS only (or ${ADMIN_TOKEN_ENV}, else the key in "
        f"${TOKEN_ENV})",
    )

    commands.add_parser("health", parents=[common], help="the service's dependency health")
    return parser


def resume_key(path: Path) -> str:
    """The idempotency key of `upload --resume`: the same for the same file (path, size,
    modification time), so a second run finds the first run's session."""
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    return "resume-" + hashlib.sha256(identity).hexdigest()[:40]


def read_local_files(args: argparse.Namespace) -> None:
    """Checks and reads local files before the event loop starts (blocking calls)."""
    args.root_certificates = _read_pem(args.ca_cert, "CA_CERT_UNREADABLE")
    if bool(args.cert) != bool(args.key):
        raise CliError(
            "Для mTLS нужны оба файла: --cert и --key",
            reason="CLIENT_CERT_NEEDS_KEY",
            exit_code=EXIT_USAGE,
        )
    args.certificate_chain = _read_pem(args.cert, "CLIENT_CERT_UNREADABLE")
    args.private_key = _read_pem(args.key, "CLIENT_KEY_UNREADABLE")
    if args.command == "upload":
        path = Path(args.file)
        if not path.is_file():
            raise CliError(
                f"Файл не найден: {path}", reason="FILE_NOT_FOUND", exit_code=EXIT_INVALID
            )
        args.file, args.file_size = path, path.stat().st_size


def _read_pem(path: str | None, reason: str) -> bytes | None:
    """The bytes of a certificate or key file given on the command line (None if not given)."""
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CliError(
            f"Не удалось прочитать {path}: {e.strerror or e}", reason=reason, exit_code=EXIT_USAGE
        ) from e


def refuse_tokens_without_tls(args: argparse.Namespace) -> None:
    """No token goes out in clear text, to any address: the bearer token, and `cleanup`'s
    admin token, are refused without TLS before a connection is made."""
    if args.tls or args.ca_cert or args.cert:
        return
    if os.environ.get(TOKEN_ENV):
        raise CliError(
            f"{TOKEN_ENV} передаётся только по TLS: добавьте --tls или --ca-cert",
            reason="TOKEN_NEEDS_TLS",
            exit_code=EXIT_USAGE,
        )
    if args.command == "cleanup" and (args.admin_token or os.environ.get(ADMIN_TOKEN_ENV)):
        raise CliError(
            f"Токен администратора (--admin-token, {ADMIN_TOKEN_ENV}) передаётся только по TLS: "
            "добавьте --tls или --ca-cert",
            reason="ADMIN_TOKEN_NEEDS_TLS",
            exit_code=EXIT_USAGE,
        )


async def run(args: argparse.Namespace, out: Output) -> int:
    refuse_tokens_without_tls(args)
    token = os.environ.get(TOKEN_ENV) or None
    client = AsyncCheckoutClient(
        args.addr,
        tls=args.tls,
        root_certificates=args.root_certificates,
        certificate_chain=args.certificate_chain,
        private_key=args.private_key,
        token=token,
        timeout_s=args.timeout or None,
        retry=RetryPolicy(),
    )
    async with client:
        return await COMMANDS[args.command](client, args, out)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: parses `argv`, runs the command, exits with its code."""
    args = build_parser().parse_args(argv)
    out = Output(args.json)
    try:
        read_local_files(args)
        code = asyncio.run(run(args, out))
    except CheckoutError as e:
        out.error(e.message, e.reason, e.code.name)
        code = exit_code_for(e)
    except CliError as e:
        out.error(e.message, e.reason, "CLIENT")
        code = e.exit_code
    except KeyboardInterrupt:
        out.error("Прервано", "INTERRUPTED", "CANCELLED")
        code = EXIT_INTERRUPTED
    except Exception as e:
        if os.environ.get("CHECKOUT_DEBUG"):
            raise
        out.error(f"Ошибка клиента: {type(e).__name__}: {e}", "CLIENT_ERROR", "UNKNOWN")
        code = EXIT_ERROR
    sys.exit(code)


if __name__ == "__main__":
    main()
