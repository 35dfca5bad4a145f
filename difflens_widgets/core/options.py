"""One definition of every lens option, read by the Python API, the command line, ``%difflens`` and the dashboard.

Each option has one name everywhere: the :meth:`Lens.run` keyword, the dashboard trait, and the flag
(``--num-inference-steps``; short aliases such as ``--steps`` are listed here too, so they cannot drift either).
Values are what a person types (``"0:12:2"``, ``"0,1"``, ``""`` for "the default"); :func:`run_arguments` turns
them into :meth:`Lens.run` arguments, whose own validation then gives the error messages.

``compare`` is the one view option: it runs a second lens beside the normal one (same seeds, same noise) so the
final-norm ablation or the lensed negative can be read against it layer by layer (see :mod:`.panels`).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from . import validate

SURFACES = frozenset({"cli", "magic", "widget", "sweep"})
COMPARE = ("none", "final_norm", "lens_negative")


@dataclass(frozen=True)
class LensOption:
    name: str  # Lens.run keyword == dashboard trait; the flag is --name with dashes
    kind: str  # "text" | "int" | "float" | "flag" | "choice"
    default: object  # as typed (None: the pipeline's own convention)
    label: str  # the dashboard's label
    help: str  # command-line help and the dashboard's tooltip
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # extra short flags (--steps)
    needs: str = ""  # "" | "several_encoders" | "pooled": the dashboard shows it only where the model has it
    surfaces: frozenset = field(default=SURFACES)
    run_keyword: bool = True  # False: a view option (compare), not a Lens.run argument

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def spec(self) -> dict:
        """What the dashboard's front-end needs to draw this option's control (sent once, as JSON)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "label": self.label,
            "help": self.help,
            "choices": list(self.choices),
            "needs": self.needs,
            "default": self.default,
        }


OPTIONS: tuple[LensOption, ...] = (
    LensOption(
        "layers",
        "text",
        "",
        "Layers",
        "text-encoder layers to lens: a slice over 0..L such as 0:12:2, or a list such as 0,4,8; empty = "
        "every layer (0 = token embeddings, L = the last block)",
    ),
    LensOption(
        "seeds",
        "text",
        "0",
        "Seeds",
        "seeds, comma-separated (e.g. 0,1): one row each; every layer of a row starts from the same noise",
    ),
    LensOption("num_inference_steps", "int", 20, "Steps", "denoising steps per image", aliases=("--steps",)),
    LensOption(
        "guidance_scale",
        "float",
        7.5,
        "Guidance",
        "classifier-free guidance scale, 0..100 (≤ 1 turns guidance off)",
        aliases=("--guidance",),
    ),
    LensOption(
        "negative_prompt",
        "text",
        "",
        "Negative",
        "negative prompt (the unconditional branch's text); empty = the pipeline's default",
        aliases=("--negative",),
    ),
    LensOption(
        "final_norm",
        "flag",
        None,
        "Final norm",
        "apply the encoder's final norm to each layer (the lens as in the paper); off = the paper's ablation "
        "(App. A.3). Default: as the pipeline does",
    ),
    LensOption(
        "tokens",
        "choice",
        "all",
        "Tokens",
        "which positions are lensed: all, prompt (padding from the empty prompt) or padding (the reverse)",
        choices=validate.TOKEN_RANGES,
    ),
    LensOption(
        "per_token",
        "flag",
        False,
        "Per token",
        "one row per prompt token: the empty prompt's conditioning with only that token's position lensed",
        surfaces=frozenset({"cli", "magic", "widget"}),
    ),
    LensOption(
        "skip_layers",
        "text",
        "",
        "Skip blocks",
        "text-encoder blocks to knock out (1..L, e.g. 3,4): block l is bypassed, so h^l = h^(l-1)",
    ),
    LensOption(
        "lens_negative",
        "flag",
        False,
        "Lens negative",
        "lens the negative prompt at the same layer as the prompt (default: its normal conditioning)",
    ),
    LensOption(
        "other_encoders",
        "choice",
        "empty",
        "Other encoders",
        "multi-encoder models: the encoders not lensed give the empty prompt's (empty) or the prompt's "
        "normal (normal) conditioning",
        choices=validate.OTHER_ENCODERS,
        needs="several_encoders",
    ),
    LensOption(
        "lens_pooled",
        "flag",
        False,
        "Lens pooled",
        "also lens the pooled embedding of the lensed encoder",
        needs="pooled",
    ),
    LensOption(
        "encoder",
        "text",
        "",
        "Encoder",
        "the text encoder to lens, for models with several (e.g. text_encoder_2 for SDXL's bigger CLIP, "
        "text_encoder_3 for SD3's T5); empty = the family's main one",
        needs="several_encoders",
        run_keyword=False,
    ),
    LensOption(
        "text_from",
        "text",
        "",
        "Text from",
        "cross-model lens: another model ('toy', a folder or a cached hub id) whose text encoder feeds this "
        "model's denoiser; shapes must match",
        surfaces=frozenset({"cli", "magic"}),
    ),
    LensOption(
        "height",
        "int",
        None,
        "Height",
        "image height in pixels (default: the pipeline's)",
        surfaces=frozenset({"cli", "sweep"}),
    ),
    LensOption(
        "width",
        "int",
        None,
        "Width",
        "image width in pixels (default: the pipeline's)",
        surfaces=frozenset({"cli", "sweep"}),
    ),
    LensOption(
        "compare",
        "choice",
        "none",
        "Compare",
        "show a second lens beside the normal one, same seeds and noise: final_norm = the final-norm "
        "ablation (the other setting), lens_negative = with the negative prompt lensed too",
        choices=COMPARE,
        run_keyword=False,
        surfaces=frozenset({"cli", "magic", "widget"}),
    ),
    LensOption(
        "attention",
        "flag",
        False,
        "Attention maps",
        "also capture where each word lands: the denoiser's cross-attention per image (DAAM's maps); hover or "
        "click a word to see it over the images",
        surfaces=frozenset({"magic", "widget", "sweep"}),  # the command line names a word: --attention WORD
    ),
    LensOption(
        "attention_steps",
        "text",
        "",
        "Attention steps",
        "the denoising steps whose attention is summed (0-based, e.g. 0:10 or 0,5); empty = every step",
        surfaces=frozenset({"cli", "sweep"}),  # in a notebook: lens.run(attention=True, attention_steps=...)
    ),
    LensOption(
        "attention_resolutions",
        "text",
        "",
        "Attention sites",
        "the attention sites kept, by the side of their query grid (e.g. 8,16); empty = every site",
        surfaces=frozenset({"cli", "sweep"}),  # in a notebook: lens.run(attention=True, attention_resolutions=...)
    ),
    LensOption(
        "attention_heads",
        "text",
        "",
        "Attention heads",
        "the attention heads averaged (e.g. 0,1); empty = every head",
        surfaces=frozenset({"cli", "sweep"}),  # in a notebook: lens.run(attention=True, attention_heads=...)
    ),
)
BY_NAME = {option.name: option for option in OPTIONS}


def defaults(surface: str = "widget") -> dict:
    return {o.name: o.default for o in OPTIONS if surface in o.surfaces}


def add_arguments(parser: argparse.ArgumentParser, surface: str) -> None:
    """Add every option offered on ``surface`` (``"cli"`` or ``"magic"``) to an argparse parser."""
    for option in OPTIONS:
        if surface not in option.surfaces:
            continue
        flags = [option.flag, *option.aliases]
        if option.kind == "flag":
            parser.add_argument(
                *flags,
                dest=option.name,
                action=argparse.BooleanOptionalAction,
                default=option.default,
                help=option.help,
            )
            continue
        by_kind: dict[str, dict] = {
            "int": {"type": int},
            "float": {"type": float},
            "choice": {"choices": option.choices},
        }
        kwargs = by_kind.get(option.kind, {})
        parser.add_argument(*flags, dest=option.name, default=option.default, help=option.help, **kwargs)


def values_from(namespace: argparse.Namespace) -> dict:
    """The option values an argparse parser (from :func:`add_arguments`) read."""
    return {name: getattr(namespace, name) for name in BY_NAME if hasattr(namespace, name)}


def run_arguments(values: dict) -> dict:
    """``Lens.run`` keywords from typed option values (``""`` → the default; view options left out)."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise TypeError(f"unknown lens option(s) {', '.join(unknown)}; the options are {', '.join(BY_NAME)}")
    out = {}
    for name, value in values.items():
        option = BY_NAME[name]
        if not option.run_keyword:
            continue
        if option.kind == "text" and isinstance(value, str):
            value = value.strip() or None
            if value is None and name == "seeds":
                raise ValueError("no seeds given; type one seed (e.g. 0) or several (0,1,2)")
        out[name] = value
    return out


def check_compare(value: object) -> str:
    return validate.check_choice("compare", value, COMPARE)


def precheck(values: dict) -> None:
    """The checks that need no model, so a command line fails before loading one (the rest: ``Lens.run``)."""
    if "seeds" in values:
        validate.parse_seeds(values["seeds"] if str(values["seeds"]).strip() else [])
    if "num_inference_steps" in values:
        validate.check_steps(values["num_inference_steps"])
    if "guidance_scale" in values:
        validate.check_guidance(values["guidance_scale"])
    for name in ("tokens", "other_encoders", "compare"):
        if name in values:
            validate.check_choice(name, values[name], BY_NAME[name].choices)
    for name in ("height", "width"):
        if values.get(name) is not None:
            validate.check_size(name, values[name], 8)
