"""Multi-turn conversations (data/conversations.py) on the tiny random Llama, whose tokenizer has a ChatML chat template
(data/synthetic.py): the loss on every assistant turn and nowhere else, the two record forms alike, the prompt
generation is given, training end to end, generation lines and the rating page, and bad records."""

from __future__ import annotations

import hashlib
import json
from html import escape
from pathlib import Path

import pytest

from alpaca_qlora.cli import UserError, run_cli
from alpaca_qlora.data.prompts import build_prompt
from alpaca_qlora.data.records import load_records
from alpaca_qlora.data.tokenization import IGNORE_INDEX, tokenize_example, tokenize_records
from alpaca_qlora.generation.job import main as generate_main
from alpaca_qlora.modeling import load_tokenizer
from alpaca_qlora.rating.pages import blind_pair
from alpaca_qlora.rating.pairs import BlindSet
from alpaca_qlora.training.train import main as train_main
from conftest import cli_error_line, run_script, training_args

# A 3-turn conversation with a system turn. No answer has a space before punctuation, so decoding gives it back
# byte for byte.
CONVERSATION = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "Add 2 and 2."},
    {"role": "assistant", "content": "2 + 2 = 4."},
    {"role": "user", "content": "And 4 and 4?"},
    {"role": "assistant", "content": "4 + 4 = 8."},
    {"role": "user", "content": "Reverse the word river."},
    {"role": "assistant", "content": "revir"},
]
ANSWERS = [message["content"] for message in CONVERSATION if message["role"] == "assistant"]
SHAREGPT_NAMES = {"system": "system", "user": "human", "assistant": "gpt"}
END_OF_TURN = "<|im_end|>\n"  # what the tiny tokenizer's ChatML template writes after every turn


def sharegpt(messages: list[dict]) -> list[dict]:
    return [{"from": SHAREGPT_NAMES[m["role"]], "value": m["content"]} for m in messages]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    tokenizer = load_tokenizer(str(tiny_model))
    assert tokenizer.chat_template  # the tiny tokenizer has its ChatML template: nothing to add for these tests
    return tokenizer


def render(tokenizer, messages: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def token_count(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def labelled_runs(example) -> list[list[int]]:
    """The labelled token ids, in runs of consecutive positions."""
    runs, previous = [], None
    for position, label in enumerate(example.labels):
        if label == IGNORE_INDEX:
            continue
        if previous != position - 1:
            runs.append([])
        runs[-1].append(example.input_ids[position])
        previous = position
    return runs


def one_record(tmp_path: Path, row: dict, require_output: bool = True) -> dict:
    [record] = load_records(str(write_jsonl(tmp_path / f"one-{row.get('id', 'x')}.jsonl", [row])), require_output=require_output)
    return record


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------
def test_three_turn_labels_fall_exactly_on_the_assistant_turns(tokenizer, tmp_path):
    record = one_record(tmp_path, {"id": "c", "messages": CONVERSATION})
    example = tokenize_example(record, tokenizer, "chat", 512, train_on_inputs=False)

    # the whole conversation, encoded as one text, then EOS (the tiny template's turn end is not EOS)
    assert example.input_ids == tokenizer(render(tokenizer, CONVERSATION, False))["input_ids"] + [tokenizer.eos_token_id]
    # labelled: from the assistant's opening to the end of its turn, for each of the three turns, and the final EOS
    expected = {len(example.input_ids) - 1}
    for turn in (2, 4, 6):
        start = token_count(tokenizer, render(tokenizer, CONVERSATION[:turn], True))
        end = token_count(tokenizer, render(tokenizer, CONVERSATION[: turn + 1], False))
        assert end > start
        expected |= set(range(start, end))
    assert {i for i, label in enumerate(example.labels) if label != IGNORE_INDEX} == expected
    assert all(example.labels[i] == example.input_ids[i] for i in expected)
    # and they decode to exactly the answers with the template's end of turn, the last one with EOS
    decoded = [tokenizer.decode(run) for run in labelled_runs(example)]
    assert decoded == [ANSWERS[0] + END_OF_TURN, ANSWERS[1] + END_OF_TURN, ANSWERS[2] + END_OF_TURN + tokenizer.eos_token]
    assert not example.truncated


def test_train_on_inputs_labels_everything_but_the_first_token(tokenizer, tmp_path):
    record = one_record(tmp_path, {"id": "c", "messages": CONVERSATION})
    example = tokenize_example(record, tokenizer, "chat", 512, train_on_inputs=True)
    assert example.labels[0] == IGNORE_INDEX and example.labels[1:] == example.input_ids[1:]


def test_a_cut_conversation_ends_on_its_last_whole_answer(tokenizer, tmp_path):
    record = one_record(tmp_path, {"id": "c", "messages": CONVERSATION})
    full = tokenize_example(record, tokenizer, "chat", 512, train_on_inputs=False)
    first_end = token_count(tokenizer, render(tokenizer, CONVERSATION[:3], False))  # end of the first answer's turn
    second_start = token_count(tokenizer, render(tokenizer, CONVERSATION[:4], True))
    assert second_start - first_end > 3  # the cut below lands inside the second user turn
    cut = tokenize_example(record, tokenizer, "chat", first_end + 3, train_on_inputs=False)
    assert cut.truncated and cut.input_ids == full.input_ids[:first_end] and cut.labels == full.labels[:first_end]
    assert cut.labels[-1] != IGNORE_INDEX
    prompt_length = token_count(tokenizer, render(tokenizer, CONVERSATION[:2], True))
    assert tokenize_example(record, tokenizer, "chat", prompt_length, train_on_inputs=False) is None  # nothing to learn


def test_sharegpt_and_messages_forms_are_the_same_example(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "both.jsonl", [{"id": "m", "messages": CONVERSATION},
                                                 {"id": "s", "conversations": sharegpt(CONVERSATION)}])
    messages_form, sharegpt_form = load_records(str(path))
    assert messages_form["messages"] == sharegpt_form["messages"] == CONVERSATION
    first = tokenize_example(messages_form, tokenizer, "chat", 512, train_on_inputs=False)
    second = tokenize_example(sharegpt_form, tokenizer, "chat", 512, train_on_inputs=False)
    assert first.input_ids == second.input_ids and first.labels == second.labels


# ChatML that writes "(answer)" in place of every assistant turn: the prefixes agree, the answers are not there
DROPPING_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}(answer){% else %}{{ message['content'] }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_that_drops_the_answers_is_refused_naming_the_file(tiny_model, tmp_path):
    """Each rendering is a prefix of the next, so only the content check sees that the loss would fall on "(answer)";
    the line names the file the record came from, as records.py names it for Alpaca records."""
    tokenizer = load_tokenizer(str(tiny_model))
    tokenizer.chat_template = DROPPING_TEMPLATE
    path = write_jsonl(tmp_path / "chats.jsonl", [{"id": "c", "messages": CONVERSATION}])
    records = load_records(str(path))
    with pytest.raises(UserError) as refused:
        tokenize_records(records, tokenizer, "chat", 512, False, str(path))
    assert str(refused.value) == (
        f"{path}: record 'c': the chat template does not write the content of turn 2 (an assistant turn) where the "
        "turn is rendered (it rewrites or drops it), so the loss cannot be put on that answer")


def test_a_llava_conversation_with_an_image_is_not_a_text_conversation():
    """Vision stays as it was: `conversations` with an image is LLaVA's form, read one question at a time."""
    from alpaca_qlora.data.conversations import conversation_field
    from alpaca_qlora.data.records import DEFAULT_FIELDS

    assert conversation_field({"image": "a.png", "conversations": sharegpt(CONVERSATION[1:3])}, DEFAULT_FIELDS) is None
    assert conversation_field({"conversations": sharegpt(CONVERSATION[1:3])}, DEFAULT_FIELDS) == "conversations"


# ---------------------------------------------------------------------------------------------
# As a prompt: generation and the rating page
# ---------------------------------------------------------------------------------------------
def test_prompt_is_the_last_user_turn_with_its_history(tokenizer, tmp_path):
    answered = one_record(tmp_path, {"id": "a", "messages": CONVERSATION}, require_output=False)
    assert build_prompt(answered, "chat", tokenizer) == render(tokenizer, CONVERSATION[:-1], True)
    assert (answered["instruction"], answered["input"], answered["output"]) == ("Reverse the word river.", "", "revir")

    open_ended = one_record(tmp_path, {"id": "o", "messages": CONVERSATION[:-1]}, require_output=False)
    assert build_prompt(open_ended, "chat", tokenizer) == render(tokenizer, CONVERSATION[:-1], True)
    assert open_ended["output"] is None  # no reference answer
    with pytest.raises(UserError, match="rendered with the model's chat template"):
        build_prompt(answered, "alpaca", tokenizer)


def test_generation_refuses_a_conversation_under_another_template_before_loading(tiny_model, tmp_path, monkeypatch,
                                                                                 capsys):
    from alpaca_qlora.generation import generate

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the prompts were checked")

    monkeypatch.setattr(generate, "load_for_inference", refuse)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"id": "c", "messages": CONVERSATION}])
    output = tmp_path / "out" / "gens.jsonl"
    line = cli_error_line(generate_main, ["--base_model", str(tiny_model), "--prompts_file", str(prompts),
                                          "--output_file", str(output)], capsys)  # no adapter: the alpaca template
    assert line == (f"error: {prompts}: record 0: field 'messages': a conversation is rendered with the model's chat "
                    "template; pass --prompt_template chat (not alpaca)")
    assert not output.parent.exists()


# ---------------------------------------------------------------------------------------------
# Training end to end, then generation and the rating page on its held-out conversations
# ---------------------------------------------------------------------------------------------
def conversation_rows(records: list[dict], count: int) -> list[dict]:
    """`count` 3-turn conversations made of the synthetic tasks; every other one has a system turn, every third is
    in ShareGPT's form."""
    rows = []
    for index in range(count):
        messages = [{"role": "system", "content": "Answer briefly."}] if index % 2 else []
        for record in records[3 * index : 3 * index + 3]:
            question = record["instruction"] + (f"\n\n{record['input']}" if record["input"] else "")
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": record["output"]}]
        rows.append({"id": f"conv{index}", "conversations": sharegpt(messages)} if index % 3 == 2
                    else {"id": f"conv{index}", "messages": messages})
    return rows


@pytest.fixture(scope="module")
def conversation_run(tmp_path_factory, tiny_model, tiny_records):
    root = tmp_path_factory.mktemp("conversations")
    data = write_jsonl(root / "chats.jsonl", conversation_rows(tiny_records, 40))
    output_dir = root / "run"
    result = run_script(*training_args(tiny_model, data, output_dir, "--max_steps", "3", "--prompt_template", "chat",
                                       "--val_set_size", "4"))
    assert result.returncode == 0, result.stderr[-3000:]
    return data, output_dir


def test_training_on_conversations_writes_its_adapter(conversation_run):
    data, run = conversation_run
    for name in ("adapter_model.safetensors", "adapter_config.json", "run_info.json", "val.jsonl", "train_ids.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run_info.json").read_text())["data"]
    assert (info["train_records"], info["val_records"], info["train_examples"]) == (36, 4, 36)
    [source] = info["sources"]["files"]
    assert source["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest() and (source["train"], source["val"]) == (36, 4)
    val = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    assert len(val) == 4 and all(len(row["messages"]) in (6, 7) for row in val)  # whole conversations, not turns
    results = json.loads((run / "eval_results.json").read_text())
    assert results["finished_at_step"] == 3 and results["after_training"]["eval_tokens"] > 0


def test_generation_and_the_rating_page_show_a_conversation_with_its_history(conversation_run, tmp_path):
    _, run = conversation_run
    output = tmp_path / "gens.jsonl"
    generate_main(["--adapter", str(run), "--prompts_file", str(run / "val.jsonl"), "--output_file", str(output),
                   "--max_new_tokens", "3"])
    val = {row["id"]: row for row in map(json.loads, (run / "val.jsonl").read_text().splitlines())}
    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(line["id"] for line in lines) == sorted(val)
    for line in lines:
        messages = val[line["id"]]["messages"]
        assert line["history"] == messages[:-2]  # every turn before the last question
        assert (line["instruction"], line["reference"]) == (messages[-2]["content"], messages[-1]["content"])

    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**line, "prediction": "something else"}) + "\n" for line in lines))
    blind = BlindSet([str(output), str(other)])
    shown = blind.next_item("ann", set())
    page = blind_pair(blind, "ann", shown, 0, len(blind.items))
    history = blind.answer(shown.a, shown.item).history
    assert history and 'id="history"' in page
    assert all(escape(turn["content"]) in page for turn in history)


# ---------------------------------------------------------------------------------------------
# Bad records: one line naming the file, the record and the field; exit 2; nothing written
# ---------------------------------------------------------------------------------------------
GOOD = {"messages": CONVERSATION[1:3]}
BAD_RECORDS = [
    ("no-assistant", {"messages": [{"role": "user", "content": "Hi."}]}, "record 1: field 'messages' has no 'assistant' turn"),
    ("two-users", {"messages": [{"role": "user", "content": "Hi."}, {"role": "user", "content": "Hi again."},
                                {"role": "assistant", "content": "Hello."}]},
     "record 1: field 'messages' turn 1: role 'user' where 'assistant' belongs"),
    ("assistant-first", {"messages": [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Hi."}]},
     "record 1: field 'messages' turn 0: role 'assistant' where 'user' belongs"),
    ("unknown-role", {"messages": [{"role": "user", "content": "Hi."}, {"role": "bot", "content": "Hello."}]},
     "record 1: field 'messages' turn 1: unknown role 'bot' (use system, user, assistant)"),
    ("content-not-text", {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": 3}]},
     "record 1: field 'messages' turn 1: 'content' must be a string, found int"),
    ("sharegpt-unknown-from", {"conversations": [{"from": "human", "value": "Hi."}, {"from": "bot", "value": "Hello."}]},
     "record 1: field 'conversations' turn 1: unknown from 'bot' (use system, human, gpt)"),
    ("sharegpt-gpt-first", {"conversations": [{"from": "gpt", "value": "Hello."}, {"from": "human", "value": "Hi."}]},
     "record 1: field 'conversations' turn 0: from 'gpt' where 'human' belongs"),
    ("ends-with-user", {"messages": CONVERSATION[:-1]}, "record 1: field 'messages' ends with a 'user' turn"),
]


@pytest.mark.parametrize("case_id,row,expected", BAD_RECORDS, ids=[case[0] for case in BAD_RECORDS])
def test_a_bad_conversation_is_one_line_exit_2_and_nothing_written(case_id, row, expected, tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "chats.jsonl", [GOOD, row])
    output_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_main(["--base_model", str(tiny_model), "--data_path", str(data), "--output_dir",
                                    str(output_dir), "--prompt_template", "chat", "--val_set_size", "0", "--max_steps", "1"]))
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and err and err[-1].startswith("error: "), err
    assert "Traceback" not in "\n".join(err) and f"{data}: {expected}" in err[-1], err[-1]
    assert not output_dir.exists()


def test_a_conversation_needs_the_chat_template(tiny_model, tmp_path, capsys):
    data = write_jsonl(tmp_path / "chats.jsonl", [{"instruction": "Say hi.", "output": "Hi."}, GOOD])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train_main(["--base_model", str(tiny_model), "--data_path", str(data), "--output_dir",
                                    str(tmp_path / "run"), "--val_set_size", "0", "--max_steps", "1"]))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert f"{data}: record 1: field 'messages': a conversation is rendered with the model's chat template; pass " \
           "--prompt_template chat (not alpaca)" in err
    assert not (tmp_path / "run").exists()
