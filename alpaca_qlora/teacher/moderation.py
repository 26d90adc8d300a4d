"""The moderation bot, end to end: a teacher writes QA pairs about labelled posts, a QLoRA student learns them, and
teacher, base student and tuned student are scored side by side.

    python -m alpaca_qlora.teacher.moderation --config experiments/moderation/moderation.yaml

    1 prepare   the templates with the policy in them; the image posts drawn with PIL (when the config asks for images)
    2 teacher   python -m alpaca_qlora.teacher                     -> run_dir/qa (pairs, filter report)
    3 student   training_script.py on qa/train.jsonl             -> run_dir/student
                (held-out loss on qa/heldout.jsonl: --val_data_path)
    4 answers   inference.py: base and tuned student on qa/heldout.jsonl (whole held-out posts)
    5 scores    evaluate_metrics.py: the students' answers against the teacher's (BLEU, ROUGE-L, BERTScore, paired)
    6 verdicts  the verdict question's answers (allowed / remove, rule) of teacher, base and tuned student against
                the posts' labels: accuracy, agreement with the labels and with the teacher, the verdicts given,
                and precision/recall per class
    -> results_dir: report.md, verdicts.json, verdict_rows.jsonl, teacher_training_rows.jsonl, student.json,
       generations/ (base and tuned answers), filter_report.md, metrics/ (evaluate_metrics.py's report)

    python -m alpaca_qlora.teacher.moderation --config experiments/moderation/moderation.yaml --check

rebuilds sections 2 and 3 of report.md (the student's held-out loss, the verdict tables) from results_dir's files
alone, re-reads every verdict from its answer, and exits 1 printing the differing lines when anything differs.

Every step runs the project's own command as a subprocess (as a user would) and is skipped or resumed by that
command itself when the experiment is started again. Paths in the config are relative to the config file.

Why it is kept in the package (issue 25 asked of its weight): it is the teacher's worked example, whose committed
results (experiments/results/moderation) are rebuilt by `--check` in the suite (tests/test_committed_results.py), and
the end-to-end test of the teacher -> student chain (tests/test_teacher.py); it adds no rule of its own (the steps
are the jobs', the statistics scoring's).
"""

from __future__ import annotations

import argparse
import difflib
import re
import shutil
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import fail, read_config_file
from ..files import atomic_write_json, atomic_write_text
from ..jobs import GENERATE_JOB, SCORE_JOB, TEACHER_JOB, TRAIN_JOB, Timings, run_job
from ..jsonl import read_objects, write_jsonl
from ..files import read_json_file, read_json_object
from ..run_folder import RunFolder

POLICY_MARKER = "<<POLICY>>"
VERDICT_QUESTION_SUFFIX = "/f0"  # the first fixed question of the templates: the verdict
CLASSES = ("allowed", "R1", "R2", "R3", "R4")
SYSTEMS = ("teacher", "base", "tuned")


@dataclass
class ModerationConfig:
    name: str
    policy: str
    posts: str
    templates: str
    teacher: str
    student: str
    run_dir: str
    results_dir: str
    teacher_options: dict = field(default_factory=dict)  # more `python -m alpaca_qlora.teacher` options
    training: dict = field(default_factory=dict)  # more training_script.py options
    max_new_tokens: int = 80
    generation_batch_size: int = 8
    bertscore_model: str = "minilm"
    bootstrap: int = 1000
    images: int = 0  # image posts drawn with PIL and given to the teacher (needs an image-text teacher and student)
    side_by_side: int = 4
    gpu_note: str = ""


PATH_KEYS = ("policy", "posts", "templates", "run_dir", "results_dir")


def load_config(path: str) -> ModerationConfig:
    values = read_config_file(path)
    folder = Path(path).resolve().parent
    for key in PATH_KEYS:
        if isinstance(values.get(key), str):
            values[key] = str((folder / values[key]).resolve())
    for key in ("teacher", "student"):
        value = values.get(key)
        if isinstance(value, str) and value.startswith(("./", "../")):
            values[key] = str((folder / value).resolve())
    try:
        config = ModerationConfig(**values)
    except TypeError as error:
        fail(f"--config {path}: {error}")
    for key in ("policy", "posts", "templates"):
        if not Path(getattr(config, key)).is_file():
            fail(f"--config {path}: {key} {getattr(config, key)}: no such file")
    return config


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------
def flags(options: dict) -> list[str]:
    argv = []
    for name, value in options.items():
        argv += [f"--{name}", ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def labels(config: ModerationConfig) -> dict[str, str]:
    """post id -> its class (allowed, or the rule it breaks)."""
    rows = read_objects(config.posts)
    if config.images:
        rows += read_objects(Path(config.run_dir) / "images.jsonl")
    return {str(row["id"]): row["rule"] if row["label"] == "remove" else "allowed" for row in rows}


IMAGE_POSTS = (  # (text drawn on the card, label, rule)
    ("Garden club: seed swap on Saturday at the hall", "allowed", None),
    ("WATCHES 80% OFF - message me for the link", "remove", "R2"),
    ("Lost dog: brown, answers to Pip", "allowed", None),
    ("Her number: 555 0199 - call her and complain", "remove", "R3"),
    ("Slash their tyres tonight", "remove", "R4"),
    ("Everyone on Oak Road is a fool", "remove", "R1"),
)


def draw_image_posts(folder: Path, count: int) -> list[dict]:
    """Posts as pictures: the text on a coloured card, drawn with PIL (PIL's default font)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        text, label, rule = IMAGE_POSTS[index % len(IMAGE_POSTS)]
        image = Image.new("RGB", (336, 336), (235, 225, 200) if label == "allowed" else (240, 200, 200))
        draw = ImageDraw.Draw(image)
        for number, line in enumerate(textwrap.wrap(text, 26)):
            draw.text((24, 40 + 28 * number), line, fill=(20, 20, 20))
        path = folder / f"image-post-{index}.png"
        image.save(path)
        rows.append({"id": f"image-post-{index}", "image": str(path), "text": "", "label": label, "rule": rule})
    return rows


def prepare(config: ModerationConfig) -> Path:
    """The templates with the policy written in (run_dir/templates.yaml); the image posts when asked for."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    policy = Path(config.policy).read_text(encoding="utf-8").strip()
    templates = Path(config.templates).read_text(encoding="utf-8")
    if POLICY_MARKER not in templates:
        fail(f"{config.templates}: holds no {POLICY_MARKER} marker where the policy goes")
    # the policy sits inside YAML block scalars: indent each of its lines as the marker is indented
    indented = re.sub(rf"^([ \t]*){re.escape(POLICY_MARKER)}",
                      lambda m: "\n".join(m.group(1) + line for line in policy.splitlines()), templates, flags=re.M)
    atomic_write_text(run_dir / "templates.yaml", indented)
    if config.images:
        write_jsonl(run_dir / "images.jsonl", draw_image_posts(run_dir / "images", config.images))
    return run_dir / "templates.yaml"


def teacher_step(config: ModerationConfig, templates: Path, timings: Timings) -> Path:
    output = Path(config.run_dir) / "qa"
    argv = ["--teacher", config.teacher, "--documents", config.posts, "--templates", str(templates),
            "--output_dir", str(output), "--max_new_tokens", str(config.max_new_tokens),
            "--batch_size", str(config.generation_batch_size), *flags(config.teacher_options)]
    if config.images:
        argv += ["--images", str(Path(config.run_dir) / "images.jsonl")]
    run_job("teacher", TEACHER_JOB, argv, timings)
    return output


# The student's held-out loss is measured on qa/heldout.jsonl (the teacher's answers about whole posts the student
# never trains on), given to training as --val_data_path: training's own evaluation (InstructionTrainer.heldout_loss,
# before and after training, with the run's tokenization and batching) measures it. Measuring it here after training
# would load the base and the adapter again to repeat that same evaluation. A val_set_size in the config's training
# options (pairs split off the training posts' pairs) is therefore not used.
HELDOUT_OPTIONS = ("val_set_size", "val_data_path")


def student_step(config: ModerationConfig, qa: Path, timings: Timings) -> Path:
    folder = RunFolder(Path(config.run_dir) / "student")
    heldout = str(qa / "heldout.jsonl")
    if folder.finished_step() is not None:
        if folder.config().get("data", {}).get("val_data_path") != heldout:
            fail(f"{folder.path} was trained without --val_data_path {heldout} (its held-out loss is on pairs split off "
                 "the training posts); remove that folder to train the student again")
        print(f"[skip] student: {folder.path} finished at step {folder.finished_step()}")
        return folder.path
    options = {name: value for name, value in config.training.items() if name not in HELDOUT_OPTIONS}
    for name in HELDOUT_OPTIONS:
        if name in config.training:
            print(f"[note] training.{name} ({config.training[name]}) is not used: the held-out loss is measured on {heldout}")
    argv = ["--base_model", config.student, "--data_path", str(qa / "train.jsonl"),
            "--val_data_path", heldout, "--output_dir", str(folder.path), *flags(options), *folder.restart_arguments()]
    run_job("student", TRAIN_JOB, argv, timings)
    return folder.path


def answers_step(config: ModerationConfig, qa: Path, student: Path, timings: Timings) -> dict[str, Path]:
    folder = Path(config.run_dir) / "generations"
    quantization = str(config.training.get("quantization", "nf4"))
    template = str(config.training.get("prompt_template", "alpaca"))
    models = {"base": ["--base_model", config.student, "--quantization", quantization, "--prompt_template", template],
              "tuned": ["--adapter", str(student)]}
    files = {}
    for name, model in models.items():
        files[name] = folder / f"{name}.jsonl"
        run_job(f"answers ({name})", GENERATE_JOB, [*model, "--prompts_file", str(qa / "heldout.jsonl"),
                                                    "--output_file", str(files[name]), "--max_new_tokens",
                                                    str(config.max_new_tokens), "--batch_size",
                                                    str(config.generation_batch_size)], timings)
    return files


def scores_step(config: ModerationConfig, files: dict[str, Path], timings: Timings) -> Path:
    output = Path(config.results_dir) / "metrics"
    run_job("scores", SCORE_JOB, [str(files["base"]), str(files["tuned"]), "--output_dir", str(output),
                                  "--bertscore_model", config.bertscore_model, "--bootstrap", str(config.bootstrap),
                                  "--overwrite", "--no_progress"], timings)
    return output


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------
VERDICT = re.compile(r"verdict\s*[:\-]?\s*\**\s*(allowed|allow|remove|removed)", re.IGNORECASE)
LOOSE = re.compile(r"\b(allowed|remove|removed|breaks?|violat\w*|does not break|doesn't break|is not breaking)\b", re.IGNORECASE)
RULE = re.compile(r"\bR\s?([1-4])\b|\brule\s*(?:R\s?)?#?([1-4])\b", re.IGNORECASE)


def parse_verdict(answer: str) -> str | None:
    """allowed, R1..R4, `remove` (a removal without a rule named), or None when the answer gives no verdict.

    `Verdict: allowed|remove` is what the template asks for; otherwise the first verdict word is read
    (allowed / does not break -> allowed; remove / breaks / violates -> remove), then the first rule named."""
    match = VERDICT.search(answer or "")
    if match:
        decision = "allowed" if match.group(1).lower().startswith("allow") else "remove"
    else:
        loose = LOOSE.search(answer or "")
        if not loose:
            return None
        word = loose.group(1).lower()
        decision = "allowed" if word == "allowed" or "not" in word or "n't" in word else "remove"
    if decision == "allowed":
        return "allowed"
    rule = RULE.search(answer)
    return f"R{rule.group(1) or rule.group(2)}" if rule else "remove"


def verdict_scores(truth: list[str], predicted: list[str | None]) -> dict:
    """Accuracy (exact class; and allowed-vs-remove) with the counts behind it, the verdicts given, and precision/recall
    per class (scikit-learn)."""
    from sklearn.metrics import precision_recall_fscore_support

    n = len(truth)
    shown = [p if p is not None else "no verdict" for p in predicted]
    exact = sum(t == p for t, p in zip(truth, shown))
    binary = sum((t == "allowed") == (p == "allowed") for t, p in zip(truth, shown) if p != "no verdict")
    precision, recall, _, support = precision_recall_fscore_support(truth, shown, labels=list(CLASSES), zero_division=0)
    return {
        "n": n, "correct": exact, "accuracy": exact / n if n else None,
        "binary_correct": binary, "binary_accuracy": binary / n if n else None,
        "no_verdict": sum(p is None for p in predicted),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "support": int(support[i])}
                      for i, c in enumerate(CLASSES)},
        "predicted": dict(sorted({p: shown.count(p) for p in set(shown)}.items())),
    }


def verdict_summary(rows: list[dict], train_rows: list[dict]) -> dict:
    """The scores of teacher, base and tuned on the held-out posts (each student's agreement with the teacher's verdict
    too: the same parsed verdict, a missing one never agreeing), and the teacher's on the training posts. From the rows
    alone, so that --check recomputes them from results_dir."""
    truth = [row["truth"] for row in rows]
    heldout = {name: verdict_scores(truth, [row[name] for row in rows]) for name in SYSTEMS}
    for name in SYSTEMS[1:]:
        heldout[name]["agrees_with_teacher"] = sum(row[name] is not None and row[name] == row["teacher"] for row in rows)
    training = verdict_scores([row["truth"] for row in train_rows], [row["teacher"] for row in train_rows])
    return {"heldout": heldout, "teacher_on_training_posts": training}


def verdicts_step(config: ModerationConfig, qa: Path, files: dict[str, Path]) -> dict:
    truth_by_post = labels(config)
    heldout = [r for r in read_objects(qa / "heldout.jsonl") if str(r["id"]).endswith(VERDICT_QUESTION_SUFFIX)]
    answers = {name: {str(row["id"]): row["prediction"] for row in read_objects(path)} for name, path in files.items()}
    rows = []
    for record in heldout:
        rows.append({"id": record["id"], "post": record["source_id"], "truth": truth_by_post[str(record["source_id"])],
                     "teacher": parse_verdict(record["output"]), "base": parse_verdict(answers["base"][str(record["id"])]),
                     "tuned": parse_verdict(answers["tuned"][str(record["id"])]),
                     "answers": {"teacher": record["output"], "base": answers["base"][str(record["id"])],
                                 "tuned": answers["tuned"][str(record["id"])]}})
    # the teacher's verdicts on the training posts too: how good the labels the student learns from are
    train_rows = [{"id": r["id"], "post": r["source_id"], "truth": truth_by_post[str(r["source_id"])],
                   "teacher": parse_verdict(r["output"]), "answer": r["output"]}
                  for r in read_objects(qa / "train.jsonl") if str(r["id"]).endswith(VERDICT_QUESTION_SUFFIX)]
    question = read_json_object(qa / "teacher_config.json", "the teacher's options")["templates"]["fixed_questions"][0]
    return {"question": question, **verdict_summary(rows, train_rows), "rows": rows, "train_rows": train_rows}


def student_summary(student: Path, qa: Path) -> dict:
    """What section 2 says about the student, from its run folder (written to results_dir/student.json)."""
    folder = RunFolder(student)
    evaluation, data = folder.eval_results(), folder.info().get("data", {})
    heldout = read_objects(qa / "heldout.jsonl")
    return {"heldout_file": "qa/heldout.jsonl", "records": len(heldout),
            "posts": len({str(record["source_id"]) for record in heldout}), "pairs": data.get("val_examples"),
            "tokens": evaluation.get("after_training", {}).get("eval_tokens"),
            "before": evaluation.get("before_training", {}).get("eval_loss"),
            "after": evaluation.get("after_training", {}).get("eval_loss"), "steps": evaluation.get("finished_at_step"),
            "not_measured": evaluation.get("heldout")}


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
VERDICTS = (*CLASSES, "remove", "no verdict")  # what parse_verdict reads (None shown as "no verdict")
VERDICT_TITLES = {"remove": "remove (no rule named)", "no verdict": "none (no verdict read)"}


def percent(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def share(count: int | None, n: int) -> str:
    if count is None:
        return "(itself)"
    return f"{count / n:.0%} ({count} of {n})" if n else "n/a"


def loss(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table_row(title: str, cells: list[str]) -> str:
    return f"| {title} | " + " | ".join(cells) + " |"


def verdict_table(scores: dict) -> list[str]:
    n = scores["teacher"]["n"]
    lines = ["| | " + " | ".join(SYSTEMS) + " |", "|---|" + "---|" * len(SYSTEMS)]
    lines.append(table_row("accuracy = agreement with the label (class: allowed or the rule)",
                           [share(scores[s]["correct"], n) for s in SYSTEMS]))
    lines.append(table_row("accuracy (allowed vs remove)", [share(scores[s]["binary_correct"], n) for s in SYSTEMS]))
    lines.append(table_row("agreement with the teacher's verdict", [share(scores[s].get("agrees_with_teacher"), n) for s in SYSTEMS]))
    for verdict in VERDICTS:
        lines.append(table_row(f"verdicts given: {VERDICT_TITLES.get(verdict, verdict)}",
                               [str(scores[s]["predicted"].get(verdict, 0)) for s in SYSTEMS]))
    for cls in CLASSES:
        cells = [f"{percent(scores[s]['per_class'][cls]['precision'])} / {percent(scores[s]['per_class'][cls]['recall'])}"
                 for s in SYSTEMS]
        lines.append(table_row(f"{cls} precision / recall (n={scores['teacher']['per_class'][cls]['support']})", cells))
    return lines


def same_verdict_lines(rows: list[dict]) -> list[str]:
    """A plain sentence for each system that gives every post the same verdict: its accuracy then only counts labels."""
    n, removed = len(rows), sum(row["truth"] != "allowed" for row in rows)
    lines = []
    for name in SYSTEMS:
        given = {row[name] for row in rows}
        if len(given) != 1:
            continue
        verdict = given.pop()
        if verdict is None:
            lines.append(f"{name} gives no verdict to any of the {n} posts: every accuracy above is 0 for it.")
        elif verdict == "allowed":
            lines.append(f"{name} answers allowed to all {n} posts: its allowed-vs-remove accuracy is the share of posts "
                         f"labelled allowed ({n - removed} of {n}).")
        else:
            same_rule = "" if verdict == "remove" else (
                f"; its class accuracy is the share labelled {verdict} ({sum(row['truth'] == verdict for row in rows)} of {n})")
            lines.append(f"{name} answers {verdict} to all {n} posts: its allowed-vs-remove accuracy is the share of posts "
                         f"labelled remove ({removed} of {n}){same_rule}.")
    return lines


def student_section(student: dict) -> list[str]:
    """Section 2: the student's held-out loss, and what it was measured on."""
    lines = ["## 2. The student", ""]
    if student["after"] is None:
        return lines + [f"Held-out loss: not measured ({student['not_measured']}).", ""]
    left_out = student["records"] - student["pairs"]
    note = f" ({left_out} of {student['records']} left out: the prompt alone fills max_seq_length)" if left_out else ""
    return lines + [
        f"Held-out loss of the student (mean negative log-likelihood per answer token) on the teacher's answers about the "
        f"{student['posts']} held-out posts, which it never trained on (`{student['heldout_file']}`, training's "
        f"--val_data_path: {student['pairs']} pairs{note}, {student['tokens']:,} answer tokens): {loss(student['before'])} "
        f"before, {loss(student['after'])} after {student['steps']} steps.", ""]


def verdict_section(question: str, rows: list[dict], train_rows: list[dict]) -> list[str]:
    """Section 3: the verdicts of teacher, base and tuned against the labels, from the rows alone."""
    summary = verdict_summary(rows, train_rows)
    training = summary["teacher_on_training_posts"]
    label_counts = ", ".join(f"{cls} {sum(row['truth'] == cls for row in rows)}" for cls in CLASSES)
    sentences = [line for sentence in same_verdict_lines(rows) for line in (sentence, "")]
    return [
        "## 3. Verdicts on the held-out posts against the labels", "",
        f"The verdict question (\"{question}\") on {len(rows)} held-out posts; verdicts read by `parse_verdict`. The teacher "
        "sees the policy in its prompt; the students see only the question and the post (the tuned one has learned the "
        f"teacher's answers). Labels of the {len(rows)} posts: {label_counts}.", "",
        *verdict_table(summary["heldout"]), "", *sentences,
        f"The teacher's verdicts on the {training['n']} training posts (the labels the student learned from): accuracy "
        f"{percent(training['accuracy'])}, allowed vs remove {percent(training['binary_accuracy'])}.", "",
    ]


def metrics_lines(metrics_dir: Path) -> list[str]:
    path = metrics_dir / "metrics.md"
    return path.read_text(encoding="utf-8").strip().splitlines() if path.is_file() else ["(no metrics)"]


def write_results(results: Path, qa: Path, verdicts: dict, student: dict, files: dict[str, Path]) -> None:
    """The files the report is made from, beside it: what --check rebuilds sections 2 and 3 from."""
    results.mkdir(parents=True, exist_ok=True)
    shutil.copy(qa / "filter_report.md", results / "filter_report.md")
    shutil.copy(qa / "filter_report.json", results / "filter_report.json")
    atomic_write_json(results / "verdicts.json", {k: v for k, v in verdicts.items() if k not in ("rows", "train_rows")})
    write_jsonl(results / "verdict_rows.jsonl", verdicts["rows"])
    write_jsonl(results / "teacher_training_rows.jsonl", verdicts["train_rows"])
    atomic_write_json(results / "student.json", student)
    (results / "generations").mkdir(exist_ok=True)
    for name, path in files.items():
        shutil.copy(path, results / "generations" / f"{name}.jsonl")


def write_moderation_report(config: ModerationConfig, qa: Path, student: Path, metrics_dir: Path, verdicts: dict,
                 files: dict[str, Path], timings: dict) -> Path:
    results = Path(config.results_dir)
    student_info = student_summary(student, qa)
    write_results(results, qa, verdicts, student_info, files)
    counts = read_json_object(qa / "filter_report.json", "the teacher's filter report")["counts"]
    examples = []
    for row in verdicts["rows"][: config.side_by_side]:
        examples += [f"**{row['post']}** (label: {row['truth']})", ""]
        examples += [f"- {name} ({row[name] or 'no verdict'}): {' '.join(row['answers'][name].split())[:300]}" for name in SYSTEMS]
        examples.append("")
    lines = [
        f"# Moderation bot: {config.name}", "",
        f"Teacher `{config.teacher}`, student `{config.student}` (QLoRA, {config.training.get('quantization', 'nf4')}). "
        f"Policy: `{Path(config.policy).name}` (4 rules); posts: `{Path(config.posts).name}` "
        f"({len(read_objects(config.posts))} labelled posts written for this project).", "",
        f"Command: `python -m alpaca_qlora.teacher.moderation --config experiments/moderation/{Path(config.run_dir).name}.yaml` "
        "(see the README); `--check` rebuilds sections 2 and 3 from the files beside this report.", "",
        "## 1. The teacher's QA pairs", "",
        f"{counts['pairs']} pairs answered about {counts['sources']} posts, {counts['kept']} kept after the filters, "
        f"{counts['train']} for training and {counts['heldout']} held out ({counts['heldout_sources']} whole posts). "
        f"Full report: [filter_report.md](filter_report.md).", "",
        *[line for line in (qa / "filter_report.md").read_text().splitlines()[-len(counts['dropped']) - 2:]], "",
        *student_section(student_info),
        *verdict_section(verdicts["question"], verdicts["rows"], verdicts["train_rows"]),
        "## 4. The students' answers against the teacher's (all held-out questions)", "",
        *metrics_lines(metrics_dir), "",
        "## Side by side", "", *examples,
        "## Timings (seconds)", "", *[f"- {step}: {seconds}" for step, seconds in timings.items()], "",
        config.gpu_note, "",
    ]
    report = results / "report.md"
    atomic_write_text(report, "\n".join(lines))
    return report


# ---------------------------------------------------------------------------------------------
# --check: sections 2 and 3 rebuilt from results_dir alone
# ---------------------------------------------------------------------------------------------
CHECKED_FILES = ("report.md", "verdicts.json", "verdict_rows.jsonl", "teacher_training_rows.jsonl", "student.json",
                 "generations/base.jsonl", "generations/tuned.jsonl")


def report_sections(path: Path) -> list[str]:
    """Sections 2 and 3 of a report.md: from its '## 2.' line up to its '## 4.' line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith(("## 2.", "## 4."))]
    if len(starts) != 2:
        fail(f"{path}: no '## 2.' and '## 4.' headings to find sections 2 and 3 by")
    return lines[starts[0] : starts[1]]


def answer_differences(results: Path, rows: list[dict], train_rows: list[dict]) -> list[str]:
    """Each verdict re-read from its answer, and each student's answer as in generations/."""
    generations = {name: {str(row["id"]): row["prediction"] for row in read_objects(results / "generations" / f"{name}.jsonl")}
                   for name in SYSTEMS[1:]}
    found = []
    for row in rows:
        for name in SYSTEMS:
            if parse_verdict(row["answers"][name]) != row[name]:
                found.append(f"verdict_rows.jsonl {row['id']}: {name} verdict {row[name]!r}, its answer reads "
                             f"{parse_verdict(row['answers'][name])!r}")
        for name, answers in generations.items():
            if answers.get(str(row["id"])) != row["answers"][name]:
                found.append(f"verdict_rows.jsonl {row['id']}: the {name} answer is not the one in generations/{name}.jsonl")
    for row in train_rows:
        if parse_verdict(row["answer"]) != row["teacher"]:
            found.append(f"teacher_training_rows.jsonl {row['id']}: verdict {row['teacher']!r}, its answer reads "
                         f"{parse_verdict(row['answer'])!r}")
    return found


def check(results: Path) -> list[str]:
    """The differences between results_dir's report.md (sections 2 and 3) and verdicts.json and their rebuild from
    results_dir's other files; [] when there are none."""
    for name in CHECKED_FILES:
        if not (results / name).is_file():
            fail(f"{results / name}: missing; nothing to check against")
    rows = read_objects(results / "verdict_rows.jsonl")
    train_rows = read_objects(results / "teacher_training_rows.jsonl")
    saved = read_json_file(results / "verdicts.json")
    found = answer_differences(results, rows, train_rows)
    if {key: value for key, value in saved.items() if key != "question"} != verdict_summary(rows, train_rows):
        found.append("verdicts.json: its scores differ from those recomputed from verdict_rows.jsonl and teacher_training_rows.jsonl")
    rebuilt = student_section(read_json_file(results / "student.json")) + \
        verdict_section(saved["question"], rows, train_rows)
    return found + list(difflib.unified_diff(report_sections(results / "report.md"), rebuilt, "report.md", "rebuilt",
                                             lineterm="", n=0))


def run(config: ModerationConfig) -> Path:
    timings = Timings(Path(config.run_dir) / "timings.json")
    templates = prepare(config)
    qa = teacher_step(config, templates, timings)
    student = student_step(config, qa, timings)
    files = answers_step(config, qa, student, timings)
    metrics_dir = scores_step(config, files, timings)
    verdicts = verdicts_step(config, qa, files)
    report = write_moderation_report(config, qa, student, metrics_dir, verdicts, files, timings.read())
    print(f"report: {report}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = lambda message: fail(message)  # type: ignore[method-assign]
    parser.add_argument("--config", required=True, help="YAML config (experiments/moderation/*.yaml); its paths are relative to it")
    parser.add_argument("--check", action="store_true",
                        help="run nothing: rebuild sections 2 and 3 of results_dir/report.md from results_dir's files and "
                             "exit 1, printing the differing lines, when they differ")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if not args.check:
        run(config)
        return
    found = check(Path(config.results_dir))
    if found:
        print("\n".join(found))
        print(f"{config.results_dir}: report.md differs from its rebuild from the committed files ({len(found)} lines)",
              file=sys.stderr)
        sys.exit(1)
    print(f"{config.results_dir}: sections 2 and 3 of report.md rebuilt from the committed files, identical")


if __name__ == "__main__":
    from ..cli import run_cli

    run_cli(main)
