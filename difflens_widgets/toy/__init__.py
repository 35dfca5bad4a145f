"""The shapes world and the toy models shipped with the package: the world and its language (``world``,
``language``, ``tokenizer``), the model's architecture (``architecture``) and weights (``model/``), the annotator that
judges its images (``annotate``, ``shape_classifier``) and the measurements that describe it (``report/``,
``handchecked/``, ``MODEL_CARD.md``). Only what ships: the scripts that trained and measured the models live above
the library, in :mod:`difflens_widgets.studies`, and nothing here imports them."""

from pathlib import Path

HERE = Path(__file__).parent
MODEL_DIR = HERE / "model"  # a standard diffusers StableDiffusionPipeline folder: dl.load_pipeline("toy")
REPORT_DIR = HERE / "report"  # what the model card states, as studies.report wrote it
REPORT_T5_DIR = HERE / "report_t5"  # the same for toy-t5 (MODEL_CARD_T5.md)
HANDCHECKED_DIR = HERE / "handchecked"  # generated images labelled by eye (the CLIP toy's version 2, 240 images)
HANDCHECKED_CLIP3_DIR = HERE / "handchecked_clip3"  # the same for the CLIP toy's version 3, the one that ships
HANDCHECKED_T5_DIR = HERE / "handchecked_t5"  # the same for toy-t5
