"""The HTML of the pages: plain server-rendered forms (blind rating works without JavaScript), every text escaped.

Nothing is loaded from anywhere but this server: the style sheet and the chat script are files of this package,
served from fixed routes.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from ..generation.settings import GenerationSettings, SETTING_NAMES, stop_text
from ..scoring.inputs import RATING_RANGE
from .pairs import BlindSet, Shown

CHOICE_BUTTONS = (("A", "A is better"), ("B", "B is better"), ("tie", "Tie"), ("both_bad", "Both bad"))
MAX_COMMENT = 2000
MAX_ANNOTATOR = 64


def page(title: str, body: str, script: str = "") -> str:
    tag = f'<script src="/static/{script}"></script>' if script else ""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)}</title><link rel="stylesheet" href="/static/style.css"></head>'
            f'<body><main>{body}</main>{tag}</body></html>\n')


def message_page(status: int, message: str, back: str = "/") -> str:
    return page(f"{status}", f'<h1>{status}</h1><p id="error" class="error">{escape(message)}</p>'
                              f'<p><a href="{escape(back)}">back</a></p>')


# ---------------------------------------------------------------- blind


def blind_start(blind: BlindSet, progress: dict[str, tuple[int, int]]) -> str:
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{done} of {total}</td>"
                   f'<td><a href="/blind?annotator={quote(name)}">resume</a></td></tr>'
                   for name, (done, total) in progress.items())
    table = (f'<table id="annotators"><thead><tr><th>annotator</th><th>rated</th><th></th></tr></thead>'
             f"<tbody>{rows}</tbody></table>") if rows else "<p>Nobody has rated yet.</p>"
    return page("Blind comparison", f"""
<h1>Blind comparison</h1>
<p>{len(blind.files)} systems answered {blind.n_prompts} prompts: {len(blind.items)} pairs to rate. For each pair
you see two answers, A and B, in random order and sides; which system wrote which stays hidden.</p>
<form method="get" action="/blind" class="start">
  <label for="annotator">Your name</label>
  <input id="annotator" name="annotator" required maxlength="{MAX_ANNOTATOR}" autocomplete="username">
  <button id="start" type="submit">Start or resume</button>
</form>
<h2>Progress</h2>
{table}""")


def blind_pair(blind: BlindSet, annotator: str, shown: Shown, done: int, total: int) -> str:
    item = shown.item
    answer_a, answer_b = blind.answer(shown.a, item), blind.answer(shown.b, item)
    context = (f'<h2>Input</h2><pre id="input">{escape(answer_a.input)}</pre>' if answer_a.input else "")
    history = "".join(f'<h2>{escape(turn["role"])}</h2><pre class="turn">{escape(turn["content"])}</pre>'
                      for turn in answer_a.history)  # a conversation's earlier turns, before its last user turn
    history = f'<section class="prompt" id="history">{history}</section>' if history else ""
    buttons = "".join(f'<button type="submit" name="choice" value="{value}" id="choose-{value}">{label}</button>'
                      for value, label in CHOICE_BUTTONS)
    return page(f"Pair {done + 1} of {total}", f"""
<header class="bar">
  <span id="progress">{escape(annotator)}: {done} of {total} rated</span>
  <progress value="{done}" max="{total}"></progress>
  <a href="/blind">change annotator</a>
</header>
{history}<section class="prompt"><h2>Instruction</h2><pre id="instruction">{escape(answer_a.instruction)}</pre>{context}</section>
<div class="answers">
  <article><h2>Answer A</h2><pre id="answer-a">{escape(answer_a.prediction)}</pre></article>
  <article><h2>Answer B</h2><pre id="answer-b">{escape(answer_b.prediction)}</pre></article>
</div>
<form method="post" action="/blind/rate" class="rate">
  <input type="hidden" name="annotator" value="{escape(annotator)}">
  <input type="hidden" name="item" value="{item.index}">
  <label for="comment">Comment (optional)</label>
  <textarea id="comment" name="comment" maxlength="{MAX_COMMENT}" rows="2"></textarea>
  <div class="choices">{buttons}</div>
</form>""")


def blind_done(annotator: str, total: int) -> str:
    return page("All rated", f"""
<h1 id="done">All {total} pairs rated</h1>
<p>Thank you, {escape(annotator)}. Every rating is saved.</p>
<p><a href="/blind">Back to the start</a></p>""")


# ---------------------------------------------------------------- chat


SETTING_HELP = {name: GenerationSettings.__dataclass_fields__[name].metadata["help"] for name in SETTING_NAMES}
OPTIONAL_SETTINGS = ("top_k", "top_p", "temperature")  # empty: auto, as on the command line


def chat_page(model_label: str, defaults: GenerationSettings, ratings_path: str) -> str:
    fields = []
    for name in SETTING_NAMES:
        value = getattr(defaults, name)
        help_text = escape(SETTING_HELP[name], quote=True)
        if name == "do_sample":
            options = "".join(f'<option value="{v}"{" selected" if str(value).lower() == v or (value is None and v == "auto") else ""}>{v}</option>'
                              for v in ("auto", "true", "false"))
            control = f'<select id="do_sample" name="do_sample">{options}</select>'
        elif name == "stop":  # text, not a number: one stop string, or a JSON list of several
            control = f'<input id="stop" name="stop" value="{escape(stop_text(value))}" placeholder="none" size="16">'
        else:
            shown = "" if value is None else str(value)
            placeholder = ' placeholder="auto"' if name in OPTIONAL_SETTINGS else ""
            control = f'<input id="{name}" name="{name}" value="{escape(shown)}"{placeholder} inputmode="decimal" size="6">'
        fields.append(f'<label title="{help_text}">{name}{control}</label>')
    stars = "".join(f'<label class="star"><input type="radio" name="rating" value="{n}" id="rating-{n}">{n}</label>'
                    for n in range(RATING_RANGE[0], RATING_RANGE[1] + 1))
    return page("Chat and rate", f"""
<h1>Chat and rate</h1>
<p class="model">Model: <span id="model">{escape(model_label)}</span>. Ratings go to {escape(ratings_path)}.</p>
<div class="chat">
<form id="ask" class="ask">
  <label for="instruction">Instruction</label>
  <textarea id="instruction" name="instruction" rows="3" required></textarea>
  <label for="input">Input (optional)</label>
  <textarea id="input" name="input" rows="2"></textarea>
  <fieldset class="settings"><legend>Decoding (top_k, top_p, temperature empty: auto; stop: a string the answer ends before, or a JSON list of several, empty: none; beam search shows the answer when it is complete)</legend>
    {"".join(fields)}
  </fieldset>
  <button id="generate" type="submit">Generate</button>
</form>
<div class="side">
<section class="reply">
  <h2>Answer</h2>
  <pre id="answer" aria-live="polite"></pre>
  <p id="status"></p>
</section>
<form id="rate" class="rate" hidden>
  <fieldset><legend>Your rating, 1 (bad) to 5 (good)</legend>{stars}</fieldset>
  <label for="comment">Comment (optional)</label>
  <textarea id="comment" name="comment" maxlength="{MAX_COMMENT}" rows="2"></textarea>
  <label for="annotator">Your name (optional)</label>
  <input id="annotator" name="annotator" maxlength="{MAX_ANNOTATOR}">
  <button id="save-rating" type="submit">Save rating</button>
  <p id="rate-status"></p>
</form>
</div>
</div>""", script="chat.js")
