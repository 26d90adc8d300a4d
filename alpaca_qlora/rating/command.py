"""Human evaluation in the browser: blind side-by-side choices, or chat with one model and rate its answers.

    python -m alpaca_qlora.rating blind base.jsonl tuned.jsonl --ratings_file human.jsonl
    python -m alpaca_qlora.rating chat --adapter runs/my-run                   # the model flags of inference.py
    python -m alpaca_qlora.rating blind --help | chat --help                   # every option of a mode

blind: two or more generation files of inference.py (batch mode) on the same prompts; for each prompt two answers
       in random order and sides, model names hidden; A / B / tie / both bad, a comment, the annotator's name,
       progress, resumable. Score the choices with evaluate_metrics.py ... --pairwise_ratings human.jsonl.
chat:  one model (base, adapter or merged), answers streamed, the decoding settings of inference.py on the page,
       a 1-5 rating and a comment per answer (the lines of inference.py's /rate; evaluate_metrics.py --ratings).

Every rating is one JSON line, flushed and fsynced before the page moves on. The page binds to 127.0.0.1 unless
--host says otherwise; it has no login.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import ArgumentParser, check_writable_folder, fail, parse_dataclasses
from ..generation.settings import GenerationSettings

DEFAULT_PORT = 7860


@dataclass
class ServeArguments:
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on. Only this machine can open the "
                                                              "page unless you change it (the page has no login)."})
    port: int = field(default=DEFAULT_PORT, metadata={"help": "Port to listen on (0: any free port, printed)."})


@dataclass
class BlindArguments:
    # required, but checked after parsing: argparse's "required" error would come before a misspelled flag's hint
    ratings_file: str | None = field(default=None, metadata={"help": "Required. JSONL the choices are appended to: "
                                                                     "created if missing, resumed from (and checked) "
                                                                     "if it exists."})
    seed: int = field(default=0, metadata={"help": "Seed of every annotator's order and sides (combined with the "
                                                   "annotator's name, so a reload shows the same next pair)."})


@dataclass
class ChatArguments:
    ratings_file: str | None = field(default=None, metadata={"help": "Ratings JSONL (default: ratings.jsonl in the "
                                                                     "adapter's run folder, else here), as inference.py."})


def run_blind(argv: list[str]) -> None:
    from .pairs import BlindSet
    from .server import blind_routes, build_app, serve
    from .store import RatingsStore

    parser = ArgumentParser((BlindArguments, ServeArguments), prog="python -m alpaca_qlora.rating blind",
                            description="Blind side-by-side rating of two or more generation files.")
    parser.add_argument("generations", nargs="+", metavar="GENERATIONS",
                        help="JSONL files of inference.py --prompts_file ... --output_file, answering the same prompts.")
    blind_args, serve_args, rest = parse_dataclasses(parser, argv)
    if not blind_args.ratings_file:
        fail("--ratings_file is required: the JSONL file the choices are appended to")
    ratings = Path(blind_args.ratings_file)
    for given in rest.generations:
        if Path(given).resolve() == ratings.resolve():
            fail(f"--ratings_file {ratings} is one of the generation files: ratings go to a file of their own")
    check_writable_folder(ratings.parent, "--ratings_file")
    blind = BlindSet(rest.generations, seed=blind_args.seed)
    store = RatingsStore(ratings)
    app = build_app(blind_routes(blind, store), serve_args.host)
    serve(app, serve_args.host, serve_args.port, "/blind",
          f"{len(blind.files)} files, {blind.n_prompts} prompts, {len(blind.items)} pairs; ratings to {ratings}")


def run_chat(argv: list[str]) -> None:
    from ..generation.generate import describe_device, load_for_inference
    from ..generation.interactive import RatingsFile, default_ratings_path
    from ..generation.settings import resolve_settings
    from ..generation.source import InferenceModelArguments, resolve_model_source
    from ..generation.stop_strings import check_stop_strings
    from ..vision import text_tokenizer
    from .chat import ChatSession
    from .server import build_app, chat_routes, serve

    parser = ArgumentParser((InferenceModelArguments, GenerationSettings, ChatArguments, ServeArguments),
                            prog="python -m alpaca_qlora.rating chat",
                            description="Chat with one model in the browser and rate its answers 1-5.")
    model_args, settings, chat_args, serve_args = parse_dataclasses(parser, argv)
    resolve_settings(settings)  # every check a user can fail runs before the model loads
    if chat_args.ratings_file:
        check_writable_folder(Path(chat_args.ratings_file).parent, "--ratings_file")
    source = resolve_model_source(model_args)
    ratings = RatingsFile(chat_args.ratings_file or default_ratings_path(source))
    model, tokenizer = load_for_inference(source)
    check_stop_strings(settings.stop, text_tokenizer(tokenizer))  # the one check that needs the tokenizer
    label = source.base_model + (f" + adapter {source.adapter}" if source.adapter else " (no adapter)")
    print(f"loaded {label}: {source.describe_precision()}, on {describe_device(model)}", file=sys.stderr)
    session = ChatSession(model, tokenizer, source, settings, ratings)
    app = build_app(chat_routes(session, label), serve_args.host)
    serve(app, serve_args.host, serve_args.port, "/chat", f"ratings to {ratings.path}")


MODES = {"blind": run_blind, "chat": run_chat}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return
    mode, rest = argv[0], argv[1:]
    if mode not in MODES:
        fail(f"unknown mode '{mode}': choose blind or chat (python -m alpaca_qlora.rating --help)")
    MODES[mode](rest)
