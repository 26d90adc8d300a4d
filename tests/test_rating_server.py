"""The rating page without a browser: bad inputs at the door, the blind pairs and their per-annotator order, and
the real server (a subprocess) answering malformed requests with HTTP errors while it keeps running; chat answers
streamed as NDJSON by the tiny model."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

import pytest

from rating_helpers import (BAD, GOOD, ROOT, Server, address, connect, post_json, raw_post, read_lines, request,
                            write_generations)

from alpaca_qlora.cli import UserError
from alpaca_qlora.rating.command import main
from alpaca_qlora.rating.pairs import BlindSet
from alpaca_qlora.rating.store import RatingsStore, rating_row


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    return write_generations(tmp_path / "good.jsonl", GOOD, "good"), write_generations(tmp_path / "bad.jsonl", BAD, "bad")


# ---------------------------------------------------------------- the door


def refused(argv: list[str]) -> str:
    with pytest.raises(UserError) as error:
        main(argv)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_bad_blind_inputs_are_one_line_and_write_nothing(tmp_path, files):
    good, bad = files
    ratings = tmp_path / "ratings.jsonl"
    assert refused(["blind", str(good), "--ratings_file", str(ratings)]) == (
        "blind rating needs two or more generation files, got 1")
    assert refused(["blind", str(good), str(good), "--ratings_file", str(ratings)]).endswith("is given twice: compare "
                                                                                           "different generation files")
    fewer = write_generations(tmp_path / "fewer.jsonl", GOOD[:3], "fewer")
    assert refused(["blind", str(good), str(fewer), "--ratings_file", str(ratings)]) == (
        f"{fewer}: no answer for id 3 (1 id(s) of {good} are missing): the files must answer the same prompts")
    records = tmp_path / "records.jsonl"  # Alpaca records, not generations
    records.write_text(json.dumps({"id": 0, "instruction": "Say hi.", "input": "", "output": "Hi."}) + "\n")
    assert refused(["blind", str(good), str(records), "--ratings_file", str(ratings)]).startswith(
        f"{records}:1: not a generations file: field 'prediction' is missing")
    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in good.read_text().splitlines()]
    rows[2]["instruction"] = "Something else."
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert refused(["blind", str(good), str(other), "--ratings_file", str(ratings)]).startswith(
        f"{other}:3: field 'instruction' of id 2 differs from {good}:3")
    assert refused(["blind", str(good), str(bad), "--ratings_file", str(bad)]).endswith(
        "is one of the generation files: ratings go to a file of their own")
    terminal = tmp_path / "terminal_ratings.jsonl"  # the terminal's /rate lines are not blind choices
    terminal.write_text(json.dumps({"id": 1, "instruction": "x", "input": "", "prediction": "y", "rating": 4}) + "\n")
    assert refused(["blind", str(good), str(bad), "--ratings_file", str(terminal)]).startswith(
        f"--ratings_file {terminal}:1: not a pairwise rating")
    assert refused(["blind", str(good), str(bad), "--ratings_file", str(ratings), "--port", "70000"]) == (
        "--port must be from 0 to 65535, got 70000")
    sweep = tmp_path / "sweep.jsonl"  # two settings per prompt
    sweep.write_text(good.read_text() + good.read_text())
    assert refused(["blind", str(sweep), str(bad), "--ratings_file", str(ratings)]).startswith(
        f"{sweep}:5: id 0 again (first at line 1); blind rating takes one answer per prompt: a sweep file")
    assert refused(["serve"]) == "unknown mode 'serve': choose blind or chat (python -m alpaca_qlora.rating --help)"
    assert not ratings.exists() and terminal.read_text().count("\n") == 1


def test_door_exit_code_and_help(tmp_path, files):
    good, _ = files
    result = subprocess.run([sys.executable, "-m", "alpaca_qlora.rating", "blind", str(good), "--ratings_file",
                             str(tmp_path / "r.jsonl")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: blind rating needs two or more generation files, got 1"]
    result = subprocess.run([sys.executable, "-m", "alpaca_qlora.rating", "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "python -m alpaca_qlora.rating blind" in result.stdout


def test_chat_settings_are_checked_before_the_model_loads(tmp_path):
    message = refused(["chat", "--base_model", str(tmp_path / "no-model"), "--temperature", "0", "--do_sample"])
    assert message.startswith("--temperature 0.0 with sampling: the temperature must be > 0")


# ---------------------------------------------------------------- the pairs


def test_each_annotator_has_a_fixed_order_and_sides(tmp_path, files):
    third = write_generations(tmp_path / "third.jsonl", [g.upper() for g in GOOD], "third")
    blind = BlindSet([str(files[0]), str(files[1]), str(third)])
    assert len(blind.items) == 4 * 3  # every prompt, every two of the three files
    alice = blind.order("alice")
    assert alice == BlindSet([str(files[0]), str(files[1]), str(third)]).order("alice")  # a new process: the same
    assert alice != blind.order("bob")
    assert sorted(s.item.index for s in alice) == list(range(12))
    assert {s.a < s.b for s in alice} == {True, False}  # sides drawn: the first file is not always on A
    rated = {blind.pair_key(alice[0].item), blind.pair_key(alice[1].item)}
    assert blind.next_item("alice", rated) == alice[2] and blind.progress("alice", rated) == (2, 12)
    assert blind.next_item("alice", {blind.pair_key(item) for item in blind.items}) is None


def test_a_torn_last_line_is_cut_before_the_next_rating(tmp_path, files):
    blind = BlindSet([str(files[0]), str(files[1])])
    first, second = blind.order("alice")[:2]

    def row(shown):
        sides = {"A": blind.files[shown.a].path, "B": blind.files[shown.b].path}
        return rating_row(blind.answer(0, shown.item).prompt_id, blind.pair_files(shown.item), sides, "A", "", "alice")

    path = tmp_path / "ratings.jsonl"
    path.write_text(json.dumps(row(first)) + "\n" + json.dumps(row(second))[:40])  # killed while writing
    store = RatingsStore(path)
    assert len(store.ratings) == 1 and store.has_rated("alice", blind.pair_key(first.item))
    assert store.append(row(second)) and not store.append(row(second))  # a pair once per annotator
    assert [r["prompt_id"] for r in read_lines(path)] == [int(first.item.prompt_key),
                                                          int(second.item.prompt_key)]


# ---------------------------------------------------------------- the server


def test_blind_server_answers_malformed_requests_with_errors(tmp_path, files):
    ratings = tmp_path / "ratings.jsonl"
    with Server(["blind", str(files[0]), str(files[1]), "--ratings_file", str(ratings)], tmp_path / "log") as server:
        form = {"Content-Type": "application/x-www-form-urlencoded"}

        def post(fields, headers=form, raw=None):
            return request(server.url + "/blind/rate", raw if raw is not None else urlencode(fields).encode(), headers)

        status, _, body = request(server.url + "/blind?annotator=alice")
        assert status == 200 and b"alice: 0 of 4 rated" in body
        item = body.split(b'name="item" value="')[1].split(b'"')[0].decode()
        assert post({"annotator": "alice", "item": item, "choice": "A", "comment": "ok"})[0] == 200  # 303 followed
        cases = [
            (post({"annotator": "alice", "item": item, "choice": "A"}), 409, "already rated this pair"),
            (post({"annotator": "alice", "item": "99", "choice": "A"}), 400, "field &#x27;item&#x27; must be"),
            (post({"annotator": "alice", "item": "-1", "choice": "A"}), 400, "field &#x27;item&#x27; must be"),
            (post({"annotator": "alice", "item": "\u00b2", "choice": "A"}), 400, "field &#x27;item&#x27; must be"),
            (post({"annotator": "alice", "item": "1" * 5000, "choice": "A"}), 400, "field &#x27;item&#x27; must be"),
            (post({"annotator": "alice", "item": "1", "choice": "C"}), 400, "field &#x27;choice&#x27; must be"),
            (post({"annotator": "", "item": "1", "choice": "A"}), 400, "an annotator name is needed"),
            (post({"annotator": "a\x01", "item": "1", "choice": "A"}), 400, "control characters"),
            (post({"annotator": "x" * 65, "item": "1", "choice": "A"}), 400, "longer than 64"),
            (post({"annotator": "al", "item": "1", "choice": "A", "comment": "c" * 2001}), 400, "longer than 2000"),
            (post(None, raw=b"annotator=a&annotator=b&item=1&choice=A"), 400, "given more than once"),
            (post(None, raw=b"%ff=1"), 400, "the form is malformed"),
            (post(None, raw=b"x" * 100_000), 413, "at most 65536 bytes"),
            (post(None, {"Content-Type": "application/json"}, raw=b"{}"), 415, "expected a body of type"),
            (post({"annotator": "eve", "item": "1", "choice": "A"}, {**form, "Origin": "http://evil.example"}), 403,
             "is refused"),
            (request(server.url + "/blind/rate"), 405, ""),
            (request(server.url + "/static/..%2F..%2Fpyproject.toml"), 404, ""),
            (request(server.url + "/static/" + str(files[0])), 404, ""),
            (request(server.url + f"/blind?annotator={'x' * 100}"), 400, "longer than 64"),
            (request(server.url + "/blind", headers={"Host": "evil.example"}), 400, ""),
        ]
        for (status, _, body), expected_status, expected_text in cases:
            assert status == expected_status, (expected_status, body[:300])
            assert expected_text.encode() in body
        status, headers, body = request(server.url + "/blind")
        assert status == 200 and "default-src 'self'" in headers["Content-Security-Policy"]
        assert b"good.jsonl" not in body and b"bad.jsonl" not in body  # the systems stay hidden
    rows = read_lines(ratings)
    assert len(rows) == 1 and rows[0]["annotator"] == "alice" and rows[0]["comment"] == "ok"
    assert server.process.returncode is not None and "Traceback" not in server.stderr()


def test_other_hosts_get_a_warning(tmp_path, files):
    args = ["blind", str(files[0]), str(files[1]), "--ratings_file", str(tmp_path / "r.jsonl"), "--host", "0.0.0.0"]
    with Server(args, tmp_path / "log") as server:
        assert "warning: --host 0.0.0.0: the page has no login" in server.stderr()


CHAT_ENV = {"OMP_NUM_THREADS": "1"}


def test_chat_streams_the_answer_and_refuses_bad_requests(tmp_path, tiny_model):
    ratings = tmp_path / "ratings.jsonl"
    args = ["chat", "--base_model", str(tiny_model), "--max_new_tokens", "16", "--ratings_file", str(ratings)]
    with Server(args, tmp_path / "log", env=CHAT_ENV) as server:
        ask = {"instruction": "Name three primary colors.", "input": "",
               "settings": {"temperature": "0.8", "max_new_tokens": "24", "seed": "3"}}
        status, headers, body = post_json(server.url + "/chat/generate", ask)
        assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
        assert headers["Transfer-Encoding"] == "chunked"
        events = [json.loads(line) for line in body.decode().splitlines()]
        settings = events[0]["settings"]
        assert events[0]["event"] == "start" and settings["temperature"] == 0.8
        assert settings["top_k"] == 50 and settings["max_new_tokens"] == 24
        status, _, body = post_json(server.url + "/chat/generate", {**ask, "settings": {"max_new_tokens": ""}})
        assert json.loads(body.decode().splitlines()[0])["settings"]["max_new_tokens"] == 16  # the command line's
        texts = [e["text"] for e in events if e["event"] == "text"]
        done = events[-1]
        assert done["event"] == "done" and len(texts) >= 2  # pieces, as the streamer produced them
        assert "".join(texts).strip() == done["text"] and done["new_tokens"] >= len(texts)

        def rate(body, headers=None):
            return post_json(server.url + "/chat/rate", body, headers)

        answer_id = done["answer_id"]
        cases = [
            (post_json(server.url + "/chat/generate", b"{not json"), 400, "the body is not JSON"),
            (post_json(server.url + "/chat/generate", [1, 2]), 400, "expected a JSON object"),
            (post_json(server.url + "/chat/generate", {**ask, "instruction": " "}), 400, "field 'instruction' is empty"),
            (post_json(server.url + "/chat/generate", {**ask, "settings": {"beams": "2"}}), 400, "unknown setting"),
            (post_json(server.url + "/chat/generate", {**ask, "settings": {"temperature": "-1"}}), 400,
             "--temperature -1.0 with sampling"),
            (post_json(server.url + "/chat/generate", {**ask, "settings": {"top_k": "5", "do_sample": "false"}}), 400,
             "--top_k has no effect with --do_sample false"),
            (post_json(server.url + "/chat/generate", {**ask, "settings": {"top_p": "nan"}}), 400, "finite"),
            (request(server.url + "/chat/generate", b"{}", {"Content-Type": "text/plain"}), 415, "expected a body"),
            (rate({"answer_id": 999, "rating": 4}), 404, "no finished answer [999]"),
            (rate({"answer_id": answer_id, "rating": 6}), 400, "from 1 to 5"),
            (rate({"answer_id": answer_id, "rating": True}), 400, "from 1 to 5"),
            (rate({"answer_id": "1", "rating": 3}), 400, "'answer_id' must be an integer"),
            (rate(b'{"answer_id": ' + b"1" * 5000 + b', "rating": 3}'), 400, "the body is not JSON"),
            (post_json(server.url + "/chat/generate", {**ask, "settings": {"seed": "\u00b2"}}), 400, "not an integer"),
            (rate({"answer_id": answer_id, "rating": 4}, {"Origin": "http://evil.example"}), 403, "is refused"),
        ]
        for (status, _, body), expected_status, expected_text in cases:
            assert status == expected_status, (expected_status, body[:300])
            assert expected_text in json.loads(body)["error"]
        status, _, body = rate({"answer_id": answer_id, "rating": 4, "comment": "fine", "annotator": "carol"})
        assert status == 200 and json.loads(body) == {"id": answer_id, "rating": 4}
        assert rate({"answer_id": answer_id, "rating": 5})[0] == 409
        # beam search cannot stream: its answer arrives whole, then done
        status, _, body = post_json(server.url + "/chat/generate", {**ask, "settings": {"num_beams": "2"}})
        beams = [json.loads(line) for line in body.decode().splitlines()]
        assert [e["event"] for e in beams] == ["start", "done"] and beams[0]["settings"]["num_beams"] == 2
    [row] = read_lines(ratings)
    assert (row["id"], row["rating"], row["comment"], row["annotator"]) == (answer_id, 4, "fine", "carol")
    assert row["prediction"] == done["text"] and row["settings"] == settings
    assert "Traceback" not in server.stderr()


# ---------------------------------------------------------------- the ratings file is ours before it is touched


def run_door(args: list[str]) -> subprocess.CompletedProcess:
    """The command, which must refuse and exit (a server that starts instead is a timeout)."""
    return subprocess.run([sys.executable, "-m", "alpaca_qlora.rating", *args, "--port", "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


FOREIGN_ONE_LINERS = {  # a user's files of one line with no newline at its end: never ours to cut
    "notes.txt": b"buy milk, call Bob",
    "settings.json": b'{"learning_rate": 0.0002, "epochs": 3}',
    "record.jsonl": b'{"id": 1, "instruction": "Say hi.", "input": "", "output": "Hi."}',  # begins as a chat rating
    "pairwise_like.jsonl": b'{"kind": "pairwise", "note": "mine"}',  # begins as a blind rating
}


def test_a_foreign_ratings_file_is_refused_and_left_byte_identical(tmp_path, files, tiny_model):
    from alpaca_qlora.generation.interactive import RatingsFile

    for name, content in FOREIGN_ONE_LINERS.items():  # both ratings files: the page's blind one, chat's and /rate's
        path = tmp_path / name
        path.write_bytes(content)
        for opens in (RatingsStore, RatingsFile):
            with pytest.raises(UserError) as error:
                opens(path)
            assert str(error.value).startswith(f"--ratings_file {path}: its last line (with no newline at its end) "
                                               "is not a")
            assert str(error.value).endswith("choose another --ratings_file") and path.read_bytes() == content
    for args, name in ((["blind", str(files[0]), str(files[1])], "notes.txt"),  # the door: exit 2, one line
                       (["chat", "--base_model", str(tiny_model)], "settings.json")):
        path = tmp_path / name
        result = run_door([*args, "--ratings_file", str(path)])
        assert result.returncode == 2 and "rating page:" not in result.stdout, (result.stdout, result.stderr)
        [line] = result.stderr.splitlines()
        assert line.startswith(f"error: --ratings_file {path}: its last line (with no newline at its end) is not a")
        assert path.read_bytes() == FOREIGN_ONE_LINERS[name]


def test_a_torn_chat_rating_is_cut_and_a_torn_only_line_is_repaired(tmp_path, files):
    from alpaca_qlora.generation.interactive import RatingsFile

    whole = json.dumps({"id": 4, "instruction": "x", "input": "", "prediction": "y", "rating": 3}) + "\n"
    path = tmp_path / "ratings.jsonl"
    path.write_text(whole + '{"id": 5, "instruction": "Say', encoding="utf-8")  # killed while writing line 2
    ratings = RatingsFile(path)
    assert ratings.take_index() == 5  # numbered on from the whole lines
    ratings.append({"id": 5, "instruction": "z", "input": "", "prediction": "w", "rating": 4})
    assert [row["id"] for row in read_lines(path)] == [4, 5] and path.read_text().endswith("\n")
    blind = BlindSet([str(files[0]), str(files[1])])
    shown = blind.order("alice")[0]
    sides = {"A": blind.files[shown.a].path, "B": blind.files[shown.b].path}
    row = rating_row(blind.answer(0, shown.item).prompt_id, blind.pair_files(shown.item), sides, "B", "", "alice")
    only_torn = tmp_path / "human.jsonl"
    only_torn.write_text(json.dumps(row)[:50], encoding="utf-8")  # the first rating, cut short: no whole line yet
    store = RatingsStore(only_torn)
    assert store.ratings == [] and store.append(row)
    assert read_lines(only_torn) == [row]


def test_a_misspelled_flag_is_named_with_the_closest_one(tmp_path, files):
    ratings = tmp_path / "r.jsonl"
    assert refused(["blind", str(files[0]), str(files[1]), "--ratings_flie", str(ratings)]) == (
        "unknown flag --ratings_flie; did you mean --ratings_file?")
    assert refused(["blind", str(files[0]), str(files[1])]).startswith("--ratings_file is required")
    assert not ratings.exists()


# ---------------------------------------------------------------- the server's socket and requests


def test_the_page_accepts_connections_once_its_address_is_printed(tmp_path, files):
    args = ["blind", str(files[0]), str(files[1]), "--ratings_file", str(tmp_path / "r.jsonl"), "--port", "0"]
    process = subprocess.Popen([sys.executable, "-m", "alpaca_qlora.rating", *args], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        line = process.stdout.readline()
        assert line.startswith("rating page: http://127.0.0.1:"), line
        url = line.split()[2].removesuffix("/blind")
        with connect(url) as sock:  # the first try: no retry
            sock.sendall(b"GET /static/style.css HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert sock.recv(12) == b"HTTP/1.1 200"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_a_client_that_leaves_stops_its_answer(tmp_path, tiny_model):
    args = ["chat", "--base_model", str(tiny_model), "--max_new_tokens", "8", "--ratings_file",
            str(tmp_path / "r.jsonl")]
    with Server(args, tmp_path / "log", env=CHAT_ENV) as server:
        ask = {"instruction": "Name three primary colors.", "input": "", "settings": {"max_new_tokens": "100000"}}
        with connect(server.url) as sock:
            sock.sendall(raw_post(server.url, "/chat/generate", json.dumps(ask).encode(), "application/json"))
            received = b""
            while b'"event": "start"' not in received:  # the headers, then the first event: the answer has started
                received += sock.recv(4096)
            time.sleep(1)  # it is being generated
        started = time.monotonic()  # the client has gone: its answer must stop, and the next one come at once
        status, _, body = post_json(server.url + "/chat/generate", {**ask, "settings": {}}, timeout=30)
        events = [json.loads(line) for line in body.decode().splitlines()]
        assert status == 200 and events[-1]["event"] == "done" and events[-1]["new_tokens"] <= 8
        assert time.monotonic() - started < 10
    assert "Traceback" not in server.stderr()


def test_200_concurrent_ratings_and_a_sigkill_lose_none(tmp_path, files):
    """200 ratings at once (50 annotators x 4 pairs), the server SIGKILLed midway: every rating answered as saved
    is in the file, every line is whole and valid, and a restarted server takes the rest, each pair once."""
    ratings = tmp_path / "human.jsonl"
    args = ["blind", str(files[0]), str(files[1]), "--ratings_file", str(ratings)]
    blind = BlindSet([str(files[0]), str(files[1])])
    wanted = [(f"annotator {n}", item) for n in range(50) for item in range(4)]
    saved: set[tuple[str, int]] = set()
    enough = threading.Event()

    def rate(server: Server, key: tuple[str, int]) -> int | None:
        host, port = address(server.url)
        connection = http.client.HTTPConnection(host, port, timeout=60)
        body = urlencode({"annotator": key[0], "item": key[1], "choice": "A"})
        try:
            connection.request("POST", "/blind/rate", body, {"Content-Type": "application/x-www-form-urlencoded"})
            status = connection.getresponse().status
        except OSError:  # the server was killed
            return None
        finally:
            connection.close()
        if status == 303:
            saved.add(key)
            if len(saved) >= 60:
                enough.set()
        return status

    with Server(args, tmp_path / "log") as server, ThreadPoolExecutor(max_workers=200) as pool:
        answers = [pool.submit(rate, server, key) for key in wanted]
        assert enough.wait(timeout=120)
        server.kill()
        statuses = [answer.result(timeout=120) for answer in answers]
    assert set(statuses) <= {303, None} and len(saved) >= 60 and None in statuses  # killed midway
    on_file = {(r.annotator, r.prompt_id) for r in RatingsStore(ratings).ratings}  # every whole line checked
    assert {(name, int(blind.items[item].prompt_key)) for name, item in saved} <= on_file
    with Server(args, tmp_path / "log2") as server, ThreadPoolExecutor(max_workers=50) as pool:
        statuses = list(pool.map(lambda key: rate(server, key), wanted))
    assert statuses.count(409) == len(on_file) and set(statuses) <= {303, 409}
    rows = read_lines(ratings)
    assert ratings.read_bytes().endswith(b"\n") and len(rows) == 200
    assert len({(row["annotator"], row["prompt_id"]) for row in rows}) == 200
    assert "Traceback" not in server.stderr()
