"""Scripts that train and measure the toy model: ``train`` (the model), ``train_shape_classifier`` (the annotator's
shape CNN), ``report`` (emergence, what the model card states), ``handcheck`` (the annotator against labels made by
eye), ``probe_report`` (the denoiser side), ``dreambooth`` (the raw-vs-tuned demo). Each runs as
``python -m difflens_widgets.toy.studies.<name>``; the package itself never imports them."""
