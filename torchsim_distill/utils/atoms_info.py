"""Keys of ``atoms.info`` that layers share: the cell builders (``models``) write them and
the distillation (``distill``) reads them, so they live below both, importing nothing heavy."""

#: Marks a random alloy (``models.cu_au.random_alloy``); the acceptance suite gates its
#: formation energy as a mixing energy.
RANDOM_ALLOY_KEY = "random_alloy"
