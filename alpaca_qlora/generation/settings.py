"""Decoding settings: the options, their checks, and the fully resolved form saved with every generation.

Nothing here loads a model or imports transformers, so every setting is checked before a model loads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields

from ..cli import fail

# Values used when a sampling knob is not given: transformers' own defaults, written out so every saved
# line records what was really used (a model's generation_config can carry other defaults, e.g. top_k 20).
SAMPLING_DEFAULTS = {"top_k": 50, "top_p": 1.0, "temperature": 1.0}


@dataclass
class GenerationSettings:
    """Decoding settings. Every one of them is saved with each generation and passed to `generate` as resolved."""

    top_k: int | None = field(default=None, metadata={"help": "Sample from the k most likely tokens (0: no limit). Giving it turns sampling on. Default 50 when sampling."})
    top_p: float | None = field(default=None, metadata={"help": "Nucleus sampling mass in (0, 1]. Giving it turns sampling on. Default 1.0 when sampling."})
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature > 0. Giving it turns sampling on. Default 1.0 when sampling."})
    num_beams: int = field(default=1, metadata={"help": "Beam width; > 1 is beam search, or beam sampling when sampling is on."})
    max_new_tokens: int = field(default=256, metadata={"help": "Longest answer in tokens."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "> 1 discourages repeating tokens (1.0: off)."})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "Never repeat an n-gram of this size (0: off)."})
    do_sample: bool | None = field(
        default=None,
        metadata={"help": "Sample (true; with --num_beams > 1, beam sampling) or decode greedily / by beam search (false). "
                          "Default: on when --temperature, --top_k or --top_p is given, off otherwise.", "nargs": "?", "const": True},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the sampling (each batch is seeded from it and its index)."})
    stop: list[str] | None = field(
        default=None,
        metadata={"help": "End each answer before the first of these strings, e.g. --stop \"### Instruction:\" (an untuned "
                          "base model runs on into a next example); one or more, --stop may be repeated. Default: none.",
                  "action": "extend"},
    )


SETTING_NAMES = tuple(f.name for f in fields(GenerationSettings))
INT_SETTINGS = {"top_k", "num_beams", "max_new_tokens", "no_repeat_ngram_size", "seed"}
FLOAT_SETTINGS = {"top_p", "temperature", "repetition_penalty"}
RESET_WORDS = ("auto", "none", "default")


# ---------------------------------------------------------------------------------------------
# Settings: validation and resolution (nothing here loads a model)
# ---------------------------------------------------------------------------------------------
def asks_for_sampling(settings: GenerationSettings) -> bool:
    """Sampling is on when asked for, or when a sampling knob is given (with beams too: beam sampling)."""
    if settings.do_sample is not None:
        return settings.do_sample
    return any(getattr(settings, name) is not None for name in SAMPLING_DEFAULTS)


def check_settings(settings: GenerationSettings, where: str = "") -> None:
    """One-line error for an impossible value; `where` names a sweep setting."""
    prefix = f"{where}: " if where else ""
    for name in FLOAT_SETTINGS:
        value = getattr(settings, name)
        if value is not None and not math.isfinite(value):
            fail(f"{prefix}--{name} must be a finite number, got {value}")
    if settings.num_beams < 1:
        fail(f"{prefix}--num_beams must be >= 1, got {settings.num_beams}")
    if settings.max_new_tokens < 1:
        fail(f"{prefix}--max_new_tokens must be >= 1, got {settings.max_new_tokens}")
    if settings.top_k is not None and settings.top_k < 0:
        fail(f"{prefix}--top_k must be >= 0 (0: no limit), got {settings.top_k}")
    if settings.top_p is not None and not 0 < settings.top_p <= 1:
        fail(f"{prefix}--top_p must be in (0, 1], got {settings.top_p}")
    if settings.repetition_penalty <= 0:
        fail(f"{prefix}--repetition_penalty must be > 0 (1.0: off), got {settings.repetition_penalty}")
    if settings.no_repeat_ngram_size < 0:
        fail(f"{prefix}--no_repeat_ngram_size must be >= 0 (0: off), got {settings.no_repeat_ngram_size}")
    if asks_for_sampling(settings) and settings.temperature is not None and settings.temperature <= 0:
        fail(
            f"{prefix}--temperature {settings.temperature} with sampling: the temperature must be > 0; "
            "for greedy decoding leave out --temperature/--top_k/--top_p or pass --do_sample false"
        )
    if settings.stop is not None:
        if not settings.stop:
            fail(f"{prefix}--stop needs at least one string")
        if any(not isinstance(stop, str) or not stop for stop in settings.stop):
            fail(f"{prefix}--stop: a stop string must not be empty (it would end every answer before it begins)")


def resolve_settings(settings: GenerationSettings, where: str = "", strict: bool = True) -> dict:
    """Checked settings with every value that applies filled in: what is saved with each line and passed to `generate`.

    Without sampling the sampling knobs do not apply and are None, so two settings that decode alike are equal.
    Giving one together with --do_sample false is refused (`strict`); a sweep's grid drops it instead."""
    check_settings(settings, where)
    sampling = asks_for_sampling(settings)
    given_knobs = [name for name in SAMPLING_DEFAULTS if getattr(settings, name) is not None]
    if not sampling and given_knobs and strict:
        prefix = f"{where}: " if where else ""
        fail(f"{prefix}--{given_knobs[0]} has no effect with --do_sample false (greedy or beam search); "
             "leave it out, or sample")
    resolved = asdict(settings)
    for name, default in SAMPLING_DEFAULTS.items():
        resolved[name] = (default if resolved[name] is None else resolved[name]) if sampling else None
    resolved["do_sample"] = sampling
    for name in INT_SETTINGS:
        if resolved[name] is not None:
            resolved[name] = int(resolved[name])
    for name in FLOAT_SETTINGS:
        if resolved[name] is not None:
            resolved[name] = float(resolved[name])
    checked = {name: resolved[name] for name in SETTING_NAMES if name != "stop"}
    if settings.stop:  # left out when there is none: lines written before --stop existed keep equal settings (resume)
        checked["stop"] = list(dict.fromkeys(settings.stop))
    return checked


def settings_key(resolved: dict) -> str:
    """A canonical string for a resolved setting: equal settings give equal keys."""
    return json.dumps(resolved, sort_keys=True)


def settings_label(resolved: dict) -> str:
    return " ".join(f"{name}={json.dumps(value, ensure_ascii=False) if name == 'stop' else value}"
                    for name, value in resolved.items())


def parse_setting_value(name: str, text: str):
    """A setting's value from text (`/set top_k=10`, `--sweep top_k=1,10`); 'auto'/'none' resets an optional one."""
    if name not in SETTING_NAMES:
        fail(f"unknown setting '{name}' (choose from {', '.join(SETTING_NAMES)})")
    if name == "stop":
        return parse_stop_text(text)
    text = text.strip()
    if text.lower() in RESET_WORDS:
        default = GenerationSettings.__dataclass_fields__[name].default
        if default is not None:
            fail(f"{name}={text}: only top_k, top_p, temperature and do_sample can be reset to their default")
        return None
    try:
        if name in INT_SETTINGS:
            return int(text)
        if name in FLOAT_SETTINGS:
            value = float(text)
            if not math.isfinite(value):
                fail(f"{name}={text}: must be a finite number")
            return value
    except ValueError:
        fail(f"{name}={text}: '{text}' is not {'an integer' if name in INT_SETTINGS else 'a number'}")
    if text.lower() in ("true", "yes", "1", "on"):
        return True
    if text.lower() in ("false", "no", "0", "off"):
        return False
    fail(f"{name}={text}: expected true, false or auto")


def parse_stop_text(text: str) -> list[str] | None:
    """stop's value as text (`/set stop=...`, the chat page's field): none for no stop strings; a JSON list of strings
    for several, or for one with a newline or spaces at its ends (`["\\n\\n"]`); else the text itself, one stop string
    (`[INST]` too: text that is not a JSON list is taken as it is). A JSON list that holds anything but strings
    (`["a", 1]`) is refused: it is no list of stop strings, and as one literal string it is not what was meant."""
    if text.strip().lower() in RESET_WORDS:
        return None
    values = json_list(text)
    if values is None:
        return [text]
    others = [value for value in values if not isinstance(value, str)]
    if others:
        fail(f"stop={text}: a JSON list of stop strings holds strings only, found {json.dumps(others[0])}; to stop at "
             f"this text itself, write it as a JSON list of one string: {json.dumps([text], ensure_ascii=False)}")
    return values


def json_list(text: str) -> list | None:
    """`text` read as a JSON list, or None when it is not one."""
    try:
        values = json.loads(text)
    except json.JSONDecodeError:
        return None
    return values if isinstance(values, list) else None


def stop_text(stop: list[str] | None) -> str:
    """The text that parse_stop_text reads back as `stop` (empty for none): a plain string as itself, else JSON."""
    if not stop:
        return ""
    [first, *others] = stop
    plain = first.strip().lower() not in RESET_WORDS and json_list(first) is None  # parse_stop_text reads it as itself
    if not others and first == first.strip() and first.isprintable() and plain:
        return first
    return json.dumps(stop, ensure_ascii=False)
