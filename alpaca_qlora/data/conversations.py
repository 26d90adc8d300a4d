"""Multi-turn conversations: the two record forms and their checks.

A conversation record is either
  {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}            (OpenAI / transformers)
  {"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}               (ShareGPT)
with an optional system turn first, then user and assistant turns in turn, starting with a user turn. Both read as
the same list of {"role", "content"} messages. (A `conversations` record with an `image` is LLaVA's form: records.py
reads it as one Alpaca record per question, as before.)

A conversation trains as one example: the whole conversation rendered by the tokenizer's chat template
(`--prompt_template chat`), with the loss on every assistant turn and on nothing else, each turn seeing the turns
before it (data/tokenization.py, assistant_spans). As a prompt (generation, the rating page) it is its last user
turn with the turns before it (data/prompts.py, conversation_prompt); when it ends with an assistant turn, that turn
is the reference answer. Both render it with prompts.render_chat, the one renderer of chat messages.
"""

from __future__ import annotations

from ..cli import fail
from ..vision import IMAGE_FIELD

MESSAGES = "messages"
HISTORY = "history"  # a generation line's turns before its last user turn (generation/batch.py, the rating page)
CONVERSATIONS = "conversations"  # ShareGPT's field, and LLaVA's (with an image)
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
# Each form's field -> (its role key, its content key, its role names -> roles)
FORMS = {MESSAGES: ("role", "content", {role: role for role in ROLES}), CONVERSATIONS: ("from", "value", SHAREGPT_ROLES)}


def conversation_field(record, fields: dict[str, str]) -> str | None:
    """The field that makes `record` a text conversation (messages, or ShareGPT's conversations), else None.

    `messages` wins over everything (our own val.jsonl writes the derived instruction and output beside it); a
    `conversations` record that also holds the instruction field is an Alpaca record, one with an image is LLaVA's
    (records.py)."""
    if not isinstance(record, dict):
        return None
    if MESSAGES in record:
        return MESSAGES
    if CONVERSATIONS in record and fields["instruction"] not in record and record.get(IMAGE_FIELD) is None:
        return CONVERSATIONS
    return None


def read_messages(record: dict, field: str, where: str, require_output: bool) -> list[dict]:
    """The conversation as [{"role", "content"}], checked: one line naming the file, the record, the field and the
    turn for a turn that is not an object with a known role and a string content, roles out of order, or (with
    `require_output`, training) no assistant turn to learn from or a last turn that is not the assistant's."""
    role_key, content_key, names = FORMS[field]
    shown = {role: name for name, role in names.items()}  # role -> the form's own name for it (gpt in ShareGPT)
    turns = record[field]
    if not isinstance(turns, list) or not turns:
        fail(f"{where}: field '{field}' must be a non-empty list of turns "
             f"({{\"{role_key}\": \"...\", \"{content_key}\": \"...\"}})")
    messages = []
    for position, turn in enumerate(turns):
        at = f"{where}: field '{field}' turn {position}"
        if not isinstance(turn, dict):
            fail(f"{at}: expected an object with '{role_key}' and '{content_key}', found {type(turn).__name__}")
        if role_key not in turn:
            fail(f"{at}: missing '{role_key}'")
        if not isinstance(turn[role_key], str) or turn[role_key] not in names:
            fail(f"{at}: unknown {role_key} {turn[role_key]!r} (use {', '.join(names)})")
        if not isinstance(turn.get(content_key), str):
            found = "missing" if content_key not in turn else type(turn[content_key]).__name__
            fail(f"{at}: '{content_key}' must be a string, found {found}")
        messages.append({"role": names[turn[role_key]], "content": turn[content_key]})
    check_order(messages, f"{where}: field '{field}'", role_key, shown)
    if require_output:
        if not any(message["role"] == "assistant" for message in messages):
            fail(f"{where}: field '{field}' has no '{shown['assistant']}' turn: nothing to learn from")
        if messages[-1]["role"] != "assistant":
            fail(f"{where}: field '{field}' ends with a '{shown[messages[-1]['role']]}' turn; a training conversation "
                 f"ends with a '{shown['assistant']}' turn (what follows the last answer teaches nothing)")
    return messages


def check_order(messages: list[dict], where: str, role_key: str, shown: dict[str, str]) -> None:
    """An optional system turn first, then user, assistant, user, ... (`shown`: the form's names for the roles)."""
    first = 1 if messages[0]["role"] == "system" else 0
    if first == len(messages):
        fail(f"{where} has a '{shown['system']}' turn only; a '{shown['user']}' turn must follow it")
    for position in range(first, len(messages)):
        expected = "user" if (position - first) % 2 == 0 else "assistant"
        role = messages[position]["role"]
        if role != expected:
            fail(f"{where} turn {position}: {role_key} '{shown[role]}' where '{shown[expected]}' belongs (an optional "
                 f"'{shown['system']}' turn first, then '{shown['user']}' and '{shown['assistant']}' in turn, "
                 f"starting with '{shown['user']}')")
        if role == "user" and not messages[position]["content"].strip():
            fail(f"{where} turn {position}: the '{shown['user']}' turn is empty")


def prompt_messages(messages: list[dict]) -> list[dict]:
    """The prompt of a conversation: up to its last user turn (a last assistant turn is the reference answer)."""
    return messages[:-1] if messages[-1]["role"] == "assistant" else messages


def reference_answer(messages: list[dict]) -> str | None:
    return messages[-1]["content"] if messages[-1]["role"] == "assistant" else None


# ---------------------------------------------------------------------------------------------
# The chat template's rule, and how a bad-input line names a record
# ---------------------------------------------------------------------------------------------
def require_chat_template(template: str, where: str) -> None:
    """A conversation is rendered by the chat template only (`where`: the file, the record and its field)."""
    if template != "chat":
        fail(f"{where}: a conversation is rendered with the model's chat template; pass --prompt_template chat "
             f"(not {template})")


def record_where(record: dict, source: str | None) -> str:
    """How a bad-input line names a record once it is loaded: its file(s) when known (`source`), and its id."""
    return f"{source}: record {record['id']!r}" if source else f"record {record['id']!r}"
