"""The bundled offline demo: a drawn catalogue, tiny backbones and the stand-in vision pretraining."""
