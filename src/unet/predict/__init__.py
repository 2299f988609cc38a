"""The prediction task: one typed request read from ``src/predict.py``'s config
(:mod:`unet.predict.request`), the shared set-up of every route (:mod:`unet.predict.setup`)
and the dispatcher (:mod:`unet.predict.task`)."""
