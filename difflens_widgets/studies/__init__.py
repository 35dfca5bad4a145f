"""The studies: the scripts that made and measured the embedded toy models, above the library they use.

``pool`` and ``train`` (the models; ``campaign`` runs several trainings side by side on one machine),
``train_shape_classifier`` (the annotator's shape CNN), ``report`` (emergence per layer: what the model cards state,
and :func:`report.shipped`, which reads the shipped numbers), ``attention`` (where each word's cross-attention lands),
``handcheck`` (the annotator against labels made by eye), ``probe_report`` (the denoiser side), ``dreambooth`` (the
raw-vs-tuned demo of notebook 04). Each runs as ``python -m difflens_widgets.studies.<name>``.

They sit at the top of the import map: they may import anything in the package (sweeps run their measurements, the
engine renders, ``toy`` gives the world and the annotator), and nothing in the package imports them, so the library a
user imports does not depend on how its models were made (``tests/test_architecture.py`` holds both rules).
"""
