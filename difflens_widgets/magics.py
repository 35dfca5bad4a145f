"""IPython magics: ``%difflens "prompt" --model toy --layers 0:12:2 --seeds 0,1 --num-inference-steps 20`` shows a
LensDashboard already running; ``%%difflens`` takes one prompt per line (one dashboard each; they share the model and
take turns). The flags are the lens options of :mod:`difflens_widgets.lens_options` — the same names as
``Lens.run``'s keywords, the dashboard's controls and ``difflens run``'s flags. Errors are shown as one readable
line, not a traceback; loading a model prints no warnings or progress bars into the cell."""

from __future__ import annotations

import shlex

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from .core import options as lens_options


def magic_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(
        prog="%difflens", add_help=False, description="Show a Diffusion Lens dashboard, already running."
    )
    parser.add_argument("prompt", nargs="*", help="the prompt (quote it); in %%difflens, one prompt per line")
    parser.add_argument("--model", default="toy", help="'toy', 'toy-t5', a pipeline folder or a cached hub id")
    parser.add_argument(
        "--tuned",
        default=None,
        help="a fine-tune of --model (folder, LoRA, textual inversion): raw, tuned and their difference side by side",
    )
    lens_options.add_arguments(parser, "magic")
    parser.add_argument("-h", "--help", action="store_true", help="show this help")
    return parser


@magics_class
class DiffLensMagics(Magics):
    """Keeps one loaded pipeline per model, so repeated magics do not reload it. Each dashboard gets its own Lens
    (its own Cancel); runs on one pipeline take turns (see ``engine.pipeline_lock``)."""

    def __init__(self, shell):
        super().__init__(shell)
        self._pipelines: dict[str, object] = {}
        self.parser = magic_parser()

    def _pipeline(self, model: str):
        if model not in self._pipelines:
            from .core.models import load_pipeline

            self._pipelines[model] = load_pipeline(model)
        return self._pipelines[model]

    def _show_while_loading(self, prompt: str, model: str, tuned, text_from: str, inputs: dict):
        """The dashboard on screen at once, the model loading behind it; the run starts when it has loaded."""
        from IPython.display import display

        from .widgets import LensDashboard

        _checked_source(model)
        if text_from:
            _checked_source(text_from)
        if tuned and not __import__("pathlib").Path(tuned).expanduser().exists():
            raise FileNotFoundError(f"no tuned model at {tuned}")
        dash = LensDashboard(model, background_load=True, tuned=tuned, text_from=text_from or None,
                             on_loaded=lambda pipe: self._pipelines.setdefault(model, pipe), prompt=prompt,
                             **inputs)  # fmt: skip
        display(dash)
        dash.run()
        return dash

    @line_cell_magic
    def difflens(self, line: str, cell: str | None = None):
        """Show a Diffusion Lens dashboard, already running; it is also stored in the variable ``_difflens``
        (a list for %%difflens), whose ``.result`` is the LensResult once ``.wait()`` returns. ``%difflens -h``
        lists every flag."""
        try:
            args = self.parser.parse_args(shlex.split(line))  # quotes work for every value, as in a shell
            prompts = [" ".join(args.prompt)] if args.prompt else []
        except UsageError as err:
            print(f"difflens: {err}")
            return None
        except ValueError as err:  # shlex: an unbalanced quote, e.g. %difflens it's red
            print(f'difflens: cannot read the line ({err}); quote the prompt, e.g. %difflens "it\'s red"')
            return None
        if args.help:
            print(self.parser.format_help())
            return None
        if cell is not None:
            prompts = [p.strip() for p in cell.splitlines() if p.strip()]
        if not prompts:
            print('difflens: give a prompt, e.g. %difflens "a red circle left of a blue square"')
            return None
        from IPython.display import display

        from .widgets import LensDashboard

        values = lens_options.values_from(args)
        text_from = values.pop("text_from", "")
        inputs = {k: v for k, v in values.items() if v is not None}  # None: the pipeline's own convention
        dashboards = []
        try:
            lens_options.precheck(values)
            if len(prompts) == 1 and (
                args.model not in self._pipelines or (text_from and text_from not in self._pipelines)
            ):
                dash = self._show_while_loading(prompts[0], args.model, args.tuned, text_from, inputs)
                self.shell.user_ns["_difflens"] = dash
                return None
            if args.model not in self._pipelines:
                print(f"difflens: loading {args.model}…", flush=True)  # something on screen while it loads
            pipe = self._pipeline(args.model)
            if args.tuned:
                from .analyses.tuning import load_tuned

                args.tuned = load_tuned(pipe, args.tuned)  # once for every prompt of the cell
            extra = {"tuned": args.tuned, "text_from": self._pipeline(text_from) if text_from else None}
            for prompt in prompts:
                dash = LensDashboard(pipe, prompt=prompt, **extra, **inputs)  # resolves its inputs once
                if dash.input_error:  # refused before showing anything
                    raise ValueError(dash.input_error)
                dashboards.append(dash)
        except (ValueError, TypeError, FileNotFoundError, OSError) as err:
            print(f"difflens: {err}")
            return None
        for dash in dashboards:
            display(dash)
            dash.run()
        self.shell.user_ns["_difflens"] = dashboards[0] if len(dashboards) == 1 else dashboards
        return None


def _checked_source(model: str) -> None:
    """What can be checked of a model without loading it (a missing folder, an uncached hub id): at once."""
    from .core.models import locate

    locate(model)


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(DiffLensMagics)


def unload_ipython_extension(ipython) -> None:
    magics = ipython.magics_manager.magics
    for kind in ("line", "cell"):
        magics[kind].pop("difflens", None)
