"""The `goldenpath chat` command: its arguments, and `run`, which wires the parts together.

Here is where exit codes are decided: 0 fine, 1 the --message run failed or stopped, 2 cannot go on.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import aiohttp
from yarl import URL

from entrypoints.chat_client.approval import Approver, answer_open_questions, open_questions
from entrypoints.chat_client.conversation import HELP, Keyboard, converse
from entrypoints.chat_client.exchange import exchange
from entrypoints.chat_client.inbox import Fatal, Inbox, Signal
from entrypoints.chat_client.link import Link
from entrypoints.chat_client.login import HTTP_TIMEOUT_S, log_in, read_password
from entrypoints.chat_client.views import HumanView, JsonView, View


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--user", required=True,
                        help="your username; the password is prompted (or GOLDENPATH_PASSWORD for scripts)")
    parser.add_argument("--thread", default=None, help="continue this thread instead of starting a new one")
    parser.add_argument("--json", action="store_true",
                        help="print every server frame as one JSON line on stdout, nothing else")
    parser.add_argument("--message", default=None,
                        help="send this one message, show its run and exit: 0 completed, 1 failed or stopped")


def run(args: argparse.Namespace) -> int:
    """`goldenpath chat`; exit code 0 fine, 1 the --message run failed or stopped, 2 cannot go on."""
    try:
        base_url = _base_url(args.url)
        password = read_password(args.user)
        return asyncio.run(_main(args, base_url, password))
    except Fatal as exc:
        print(exc, file=sys.stderr, flush=True)
        return 2


def _on_a_terminal() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()


def _base_url(url: str) -> str:
    parsed = URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise Fatal(f"--url must look like http://host:port, not {url!r}")
    return url.rstrip("/")


async def _main(args: argparse.Namespace, base_url: str, password: str) -> int:
    view: View = JsonView() if args.json else HumanView()
    inbox: Inbox = asyncio.Queue()
    # No total timeout: it would end a long conversation. Each step below has its own deadline.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        token = await log_in(http, base_url, args.user, password)
        link = Link(http, base_url, token, inbox, view.note)
        await link.open()
        loop = asyncio.get_running_loop()
        # Ctrl-C becomes an inbox item: it stops a run (not the client), or leaves from the prompt.
        loop.add_signal_handler(signal.SIGINT, inbox.put_nowait, Signal.INTERRUPT)
        try:
            if args.message is not None:
                # The keyboard answers a question the run asks, on a terminal only: a script's stdin (a
                # loop reading lines, say) is never eaten.
                approver = Approver(view, Keyboard(inbox) if _on_a_terminal() else None)
                if args.thread is not None:  # a run there that waits would hold this message back
                    await answer_open_questions(link, view, inbox, approver,
                                                await open_questions(link, view, args.thread))
                outcome, _ = await exchange(link, view, inbox, approver, args.message, args.thread)
                return 0 if outcome == "agent_completed" else 1
            view.note(f"connected to {base_url} as {args.user}; {HELP}")
            keyboard = Keyboard(inbox)
            return await converse(link, view, inbox, keyboard, Approver(view, keyboard), args.thread)
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            view.end()
            await link.close()
