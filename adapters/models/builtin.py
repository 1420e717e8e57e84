"""The builtin chat model: offline rules that pick tools and write replies; NOT a language model."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from domain.llm import (
    ChatMessage,
    ModelChunk,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    UsageReport,
)


@dataclass(frozen=True, slots=True)
class _ToolPlan:
    name: str
    arguments: dict[str, Any]
    reasoning: str
    explicit: bool = False  # the user named the tool: called even if not offered (its error tells why)


_Rule = Callable[[str], _ToolPlan | None]

# --- reading the user's message -------------------------------------------------------------

_REMEMBER = re.compile(
    r"^(?:(?:ok|okay|hey|so)[,!\s]+)?(?:(?:can|could|would|will) you\s+)?(?:please\s+)?"
    r"(?:remember|note|make a note|keep in mind|don't forget|do not forget)(?:\s+(?:that|of))?"
    r"\s*[:,]?\s+(?P<fact>.+?)[\s.!]*$", re.I | re.S)
_RECALL = (
    re.compile(r"\bwhat(?:'s|s| is| was| are| were)\s+(?P<q>my\s.+)", re.I | re.S),
    re.compile(r"\bdo you (?:still )?remember\s+(?P<q>.+)", re.I | re.S),
    re.compile(r"\bdo you know\s+(?P<q>(?:what\s+)?my\s.+)", re.I | re.S),
    re.compile(r"\bwhat did i (?:tell|say to) you about\s+(?P<q>.+)", re.I | re.S),
    re.compile(r"\bwhat do you (?:know|remember) about\s+(?P<q>.+)", re.I | re.S),
    re.compile(r"\b(?:remind|tell) me\s+(?P<q>(?:what\s+)?my\s.+)", re.I | re.S),
)
_FORGET = re.compile(
    r"^(?:(?:ok|okay|hey|so|please)[,!\s]+)*(?:(?:can|could|would|will) you\s+)?(?:please\s+)?"
    r"(?:forget|delete|remove|erase)\s+(?:about\s+)?(?:(?:my|the)\s+notes?\s+(?:about|on|for|of)\s+)?"
    r"(?P<q>.+?)[\s.!?]*$", re.I | re.S)
_QUERY_EDGES = re.compile(r"^(?:what|my|the|about)\s+|\s+(?:is|was|are|were|again)$", re.I)
_TIME = re.compile(
    r"\bwhat time (?:is it|it is)\b|\btime is it\b|\bwhat(?:'s| is)? the (?:time|date)\b"
    r"|\bwhat (?:day|date) (?:is it|is today|it is)\b|\btoday'?s date\b|\bdate today\b"
    r"|\bcurrent (?:time|date)\b|\bwhat(?:'s| is) today\b|\btell me the time\b", re.I)
_ZONE = re.compile(r"\bin\s+(?P<zone>[A-Za-z]+(?:/[A-Za-z_+\-]+)+)")
_CITIES = {"london": "Europe/London", "paris": "Europe/Paris", "berlin": "Europe/Berlin",
           "new york": "America/New_York", "los angeles": "America/Los_Angeles",
           "tokyo": "Asia/Tokyo", "sydney": "Australia/Sydney"}
_LEAD_IN = re.compile(
    r"^(?:(?:hey|hi|hello|ok|okay|so|please|thanks)[,!\s]+)*"
    r"(?:(?:can|could|would|will) you\s+)?(?:please\s+)?"
    r"(?:what(?:'s|s| is)|calculate|compute|evaluate|work out|how much is|solve)?\s*", re.I)
_TRAILER = re.compile(r"(?:[\s,]*(?:please|for me))*[\s?.!=]*$", re.I)
_WORD_OPERATORS = (
    (r"\b(?:the )?square root of\s*([\d.]+)", r"sqrt(\1)"), (r"\bmultiplied by\b", "*"),
    (r"\btimes\b", "*"), (r"\bdivided by\b", "/"), (r"\bplus\b", "+"), (r"\bminus\b", "-"),
    (r"\bto the power of\b", "^"), (r"\bsquared\b", "^2"), (r"\bcubed\b", "^3"),
    (r"\bmod(?:ulo)?\b", "%"),
)
_FUNCTION_NAMES = re.compile(r"\b(?:sqrt|abs|round|min|max|pi|e)\b")
# \u00d7 and \u00f7 are the times and division signs.
_ARITHMETIC_ONLY = re.compile(r"^[\d\s.,+\-*/\u00d7\u00f7xX^%()]+$")
_OPERATOR = re.compile(r"[+\-*/\u00d7\u00f7xX^%]|\b(?:sqrt|abs|round|min|max)\(")


def _remember(text: str) -> _ToolPlan | None:
    match = _REMEMBER.match(text)
    if match is None or text.endswith("?"):
        return None
    return _ToolPlan("save_note", {"text": match["fact"]}, "Saving that to your notes.")


_USE = re.compile(r"^\s*use\s+(?P<tool>[A-Za-z0-9_-]{1,64})\s+with\s+(?P<arguments>[\[{\"\d].*?)\s*$",
                  re.I | re.S)


def _use(text: str) -> _ToolPlan | str | None:
    """'use weather__forecast with {"city": "Paris"}': that tool, those arguments, as they are."""
    match = _USE.match(text)
    if match is None:
        return None
    try:
        arguments = json.loads(match["arguments"])
    except json.JSONDecodeError as exc:
        return f"Those arguments are not JSON ({exc.msg}); write them as a JSON object."
    if not isinstance(arguments, dict):
        return "The arguments must be a JSON object."
    return _ToolPlan(match["tool"], arguments, f"Calling {match['tool']} as you asked.", explicit=True)


def _forget(text: str) -> _ToolPlan | None:
    match = _FORGET.match(text)
    if match is None:
        return None
    query = match["q"].strip()
    while (trimmed := _QUERY_EDGES.sub("", query).strip()) != query:
        query = trimmed
    if not query:
        return None
    return _ToolPlan("delete_notes", {"query": query}, f'Deleting your notes about "{query}", '
                     "once you approve.")


def _recall(text: str) -> _ToolPlan | None:
    for pattern in _RECALL:
        if match := pattern.search(text):
            query = match["q"].strip().rstrip("?.! ")
            while (trimmed := _QUERY_EDGES.sub("", query).strip()) != query:
                query = trimmed
            if query:
                return _ToolPlan("search_notes", {"query": query},
                                 f'Searching your notes for "{query}".')
    return None


def _time(text: str) -> _ToolPlan | None:
    if not _TIME.search(text):
        return None
    zone = _ZONE.search(text)
    name = zone["zone"] if zone else next(
        (iana for city, iana in _CITIES.items() if re.search(rf"\bin {city}\b", text, re.I)), None)
    if name is None:
        return _ToolPlan("current_time", {}, "Checking the clock.")
    return _ToolPlan("current_time", {"timezone": name}, f"Checking the time in {name}.")


def _arithmetic(text: str) -> _ToolPlan | None:
    candidate = _TRAILER.sub("", _LEAD_IN.sub("", text, count=1))
    for pattern, replacement in _WORD_OPERATORS:
        candidate = re.sub(pattern, replacement, candidate, flags=re.I)
    candidate = candidate.strip()
    # Only digits, operators and the calculator's names: "What is my locker code?" is no sum.
    bare = _FUNCTION_NAMES.sub(" ", candidate)
    if not (_ARITHMETIC_ONLY.match(bare) and re.search(r"\d", bare)):
        return None
    if not _OPERATOR.search(candidate):
        return None
    if "(" not in candidate:
        candidate = re.sub(r"(?<=\d),(?=\d{3}\b)", "", candidate)  # 1,000 is a thousand
    return _ToolPlan("calculator", {"expression": candidate}, f"Calculating {candidate}.")


_RULES: tuple[_Rule, ...] = (_forget, _remember, _recall, _time, _arithmetic)

_SELF = ("I'm goldenpath's built-in model: a handful of offline rules, not a language model. "
         "I pick a tool from what you write and put its result into words.")
_SMALL_TALK = (
    (re.compile(r"\b(?:who|what) are you\b|\bare you (?:a |an )?(?:bot|ai|human|language model)\b",
                re.I), _SELF),
    (re.compile(r"\bhow are you\b|\bhow's it going\b", re.I),
     "I'm running smoothly, thanks for asking. What can I do for you?"),
    (re.compile(r"\b(?:thanks|thank you|thx|cheers)\b", re.I), "You're welcome! Anything else?"),
    (re.compile(r"\b(?:bye|goodbye|see you|good night)\b", re.I),
     "Goodbye! Your notes will be here when you come back."),
    (re.compile(r"^\W*(?:hello|hi|hey|hiya|good (?:morning|afternoon|evening)|greetings)\b", re.I),
     'Hello! Ask me to calculate something ("What is 17 * 23?"), to remember a fact, '
     'to recall it, or for the time.'),
)
_CAPABILITIES = (
    ("calculator", 'do arithmetic ("What is 17 * 23?")'),
    ("save_note", 'remember things for you ("Remember that my locker code is 4417")'),
    ("search_notes", 'recall them later ("What is my locker code?")'),
    ("delete_notes", 'forget them, once you approve ("Forget my locker code")'),
    ("current_time", 'tell you the date and time ("What time is it?")'),
)


def _help(available: set[str]) -> str:
    skills = [skill for tool, skill in _CAPABILITIES if tool in available]
    intro = ("I'm the built-in rule-based model, not a language model, so I only understand "
             "a few kinds of request.")
    if not skills:
        return f"{intro} No tools are available in this conversation, so I can only chat."
    listed = skills[0] if len(skills) == 1 else f"{', '.join(skills[:-1])} and {skills[-1]}"
    return (f"{intro} I can {listed}. Any tool of yours, by name: use <tool> with <JSON object> "
            '("use calculator with {\"expression\": \"2 + 2\"}"). For anything else, connect a real '
            "model.")


def _plan(text: str, available: set[str]) -> _ToolPlan | str:
    if (used := _use(text)) is not None:  # before the spaces are folded: they may be in the JSON
        return used
    text = " ".join(text.replace("\u2019", "'").split())  # a typographic apostrophe counts
    for rule in _RULES:
        plan = rule(text)
        if plan is not None:
            if plan.name in available:
                return plan
            return f"I would use the {plan.name} tool for that, but it is not available here."
    reply = next((answer for pattern, answer in _SMALL_TALK if pattern.search(text)), None)
    return reply or _help(available)


# --- putting tool results into words --------------------------------------------------------

_SWAPS = {"i am": "you are", "i was": "you were", "you are": "I am", "you were": "I was",
          "i'm": "you're", "i've": "you've", "i'll": "you'll", "i'd": "you'd", "i": "you",
          "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "you're": "I'm",
          "you": "me", "your": "my", "yours": "mine", "yourself": "myself"}
# One pass over all of them, longest first, so nothing swapped is swapped back.
_SWAP_WORDS = re.compile(
    r"\b(?:" + "|".join(word.replace(" ", r"\s+") for word in sorted(_SWAPS, key=len, reverse=True))
    + r")\b", re.I)


def second_person(text: str) -> str:
    """'my locker code is 4417' -> 'your locker code is 4417' (and I'm -> you're, ...)."""
    swapped = _SWAP_WORDS.sub(lambda m: _SWAPS[" ".join(m[0].lower().split())], text)
    return swapped.rstrip(" .!")


def _sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."


def _calculated(result: Any, arguments: dict[str, Any]) -> str:
    return f"{result['expression']} = {result['value']}."


def _saved(result: Any, arguments: dict[str, Any]) -> str:
    return f"Got it. I'll remember that {second_person(result['text'])}."


def _found(result: Any, arguments: dict[str, Any]) -> str:
    query = str(arguments.get("query") or "that")
    notes = [str(note["text"]) for note in result["notes"]]
    if not notes:
        return f'I don\'t have anything noted about {query} yet. Tell me with "Remember that ...".'
    wanted = set(re.findall(r"\w+", query.lower()))
    # Stable sort: among equally good matches the repository's own order stands.
    notes.sort(key=lambda note: -len(wanted & set(re.findall(r"\w+", note.lower()))))
    answer = _sentence(second_person(notes[0]))
    others = "; ".join(second_person(note) for note in notes[1:])
    return f"{answer} I also noted: {others}." if others else answer


def _forgot(result: Any, arguments: dict[str, Any]) -> str:
    query = str(arguments.get("query") or "that")
    gone = [second_person(str(text)) for text in result["notes"]]
    if not gone:
        return f"I had nothing noted about {query}, so there was nothing to forget."
    return f"Done: I forgot {'; '.join(gone)}."


def _told_time(result: Any, arguments: dict[str, Any]) -> str:
    clock, _, day = str(result["human"]).partition(" on ")
    return f"It is {clock} {result['timezone']} on {day}."


_COMPOSERS: dict[str, Callable[[Any, dict[str, Any]], str]] = {
    "calculator": _calculated, "save_note": _saved, "search_notes": _found,
    "current_time": _told_time, "delete_notes": _forgot,
}
_FAILURES = {"calculator": "I couldn't calculate that",
             "save_note": "I couldn't save that note",
             "search_notes": "I couldn't search your notes",
             "current_time": "I couldn't tell the time",
             "delete_notes": "I couldn't delete those notes"}


def _loads(text: str) -> Any:
    try:
        return json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        return None


def _answer_one(call: ToolCall | None, content: str) -> str:
    name = call.name if call else "tool"
    arguments = _loads(call.arguments) if call else {}
    payload = _loads(content)
    if not isinstance(payload, dict) or ("error" not in payload and "result" not in payload):
        payload = {"error": "it answered something I could not read"}
    if "error" in payload and str(payload["error"]).startswith("denied"):
        return f"OK, I did not use {name}: you did not approve it."
    if "error" in payload:
        reason = str(payload["error"]).rstrip(". ")
        return f"{_FAILURES.get(name, f'The {name} tool failed')}: {reason}."
    composer = _COMPOSERS.get(name)
    try:
        if composer is not None:
            return composer(payload["result"], arguments if isinstance(arguments, dict) else {})
    except (KeyError, TypeError, AttributeError):
        pass  # a result of an unexpected shape is still worth showing as it is
    return f"The {name} tool returned {json.dumps(payload['result'], default=str)}."


def _answer_tool_results(messages: Sequence[ChatMessage]) -> str:
    calls = {call.id: call for message in messages for call in message.tool_calls}
    results: list[ChatMessage] = []
    for message in reversed(messages):
        if message.role != "tool":
            break
        results.insert(0, message)
    return " ".join(_answer_one(calls.get(m.tool_call_id or ""), m.content) for m in results)


# --- streaming --------------------------------------------------------------------------------


def split_words(text: str, words: int) -> list[str]:
    """Pieces of `words` words each that join back to exactly `text`."""
    tokens = re.findall(r"\s*\S+", text)
    if not tokens:
        return [text] if text else []
    tokens[-1] += text[sum(map(len, tokens)):]
    return ["".join(tokens[i:i + words]) for i in range(0, len(tokens), words)]


def _tool_call_chunks(plan: _ToolPlan) -> list[ModelChunk]:
    arguments = json.dumps(plan.arguments, ensure_ascii=False)
    cuts = [0, len(arguments) // 3, 2 * len(arguments) // 3, len(arguments)]
    pieces = [arguments[a:b] for a, b in pairwise(cuts) if b > a]
    call_id = f"call_{secrets.token_hex(6)}"
    # As OpenAI streams it: the id and name come once, on the first piece of index 0.
    return [ToolCallDelta(index=0, id=call_id if i == 0 else None,
                          name=plan.name if i == 0 else None, arguments=piece)
            for i, piece in enumerate(pieces or [""])]


# "Step by step: 2 + 3; remember that my code is 12; what is my code?": one tool call per part,
# each in its own model turn, then one answer with every result. A slow multi-step request that
# fault drills can stop between two steps, and a demo of a run that goes through several tools.
_STEPS = re.compile(r"^\s*(?:(?:please|ok|okay)[,\s]+)?step by step\s*:\s*(?P<parts>.+)$", re.I | re.S)
MAX_STEP_PARTS = 6


def _step_parts(text: str) -> list[str] | None:
    match = _STEPS.match(text)
    if match is None:
        return None
    parts = [part.strip() for part in match["parts"].split(";") if part.strip()]
    return parts[:MAX_STEP_PARTS] or None


def _next_step(conversation: Sequence[ChatMessage], available: set[str]) -> _ToolPlan | str | None:
    """The next part of a step-by-step request, or the answer once every part has its result;
    None when the last user message is not one."""
    last_user = max((i for i, m in enumerate(conversation) if m.role == "user"), default=None)
    if last_user is None or (parts := _step_parts(conversation[last_user].content)) is None:
        return None
    done = [m for m in conversation[last_user + 1:] if m.role == "tool"]
    if len(done) < len(parts):
        plan = _plan(parts[len(done)], available)
        if isinstance(plan, _ToolPlan):
            return _ToolPlan(plan.name, plan.arguments,
                             f"Step {len(done) + 1} of {len(parts)}: {plan.reasoning}")
        return f"I can't do step {len(done) + 1} ({parts[len(done)]}) with a tool. {plan}"
    calls = {call.id: call for m in conversation[last_user + 1:] for call in m.tool_calls}
    return " ".join(_answer_one(calls.get(m.tool_call_id or ""), m.content) for m in done)


def _word_count(text: str) -> int:
    return len(text.split())


class BuiltinChatModel:
    """Speaks the ChatModel port with rules instead of a network model; shared, so stateless."""

    name = "builtin"

    def __init__(self, *, delay_s: float = 0.0, chunk_words: int = 2) -> None:
        if delay_s < 0:
            raise ValueError("delay_s must not be negative")
        if chunk_words < 1:
            raise ValueError("chunk_words must be at least 1")
        self._delay_s = delay_s
        self._chunk_words = chunk_words

    def _decide(self, request: ModelRequest) -> _ToolPlan | str:
        available = {spec.name for spec in request.tools}
        conversation = [m for m in request.messages if m.role != "system"]
        if (stepped := _next_step(conversation, available)) is not None:
            return stepped
        if conversation and conversation[-1].role == "tool":
            return _answer_tool_results(request.messages)
        if conversation and conversation[-1].role == "user":
            return _plan(conversation[-1].content, available)
        return _help(available)

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelChunk]:
        decision = self._decide(request)
        if isinstance(decision, _ToolPlan):
            chunks = [ReasoningDelta(decision.reasoning), *_tool_call_chunks(decision)]
            said = f"{decision.reasoning} {json.dumps(decision.arguments)}"
        else:
            chunks = [TextDelta(piece) for piece in split_words(decision, self._chunk_words)]
            said = decision
        for position, chunk in enumerate(chunks):
            if position and self._delay_s > 0:
                await asyncio.sleep(self._delay_s)
            yield chunk
        prompt = sum(_word_count(message.content) for message in request.messages)
        yield UsageReport(prompt_tokens=prompt, completion_tokens=_word_count(said))
