"""`goldenpath chat`: a terminal client that logs in, opens /ws and streams runs as they happen.

Split by purpose: `command` (arguments, `run`), `login` (password, HTTP login), `link` (the socket that
reconnects and resumes), `exchange` (one run: what to send, which frames are its own), `approval` (the
question a run asks before a tool runs, and the answer typed), `conversation` (the prompt and the
keyboard), `threads` (`/threads`, `/search`, `/rename`, `/open`
over HTTP), `views` (how frames are shown). Only the client's own modules and
aiohttp are imported here, never the server's, so the command starts in a fraction of a second.
"""

from entrypoints.chat_client.command import add_arguments, run

__all__ = ["add_arguments", "run"]
