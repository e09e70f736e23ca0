"""The adaptive attacks a defense calls for: the rule that judges a randomized model by the mean of its draws
and the EOT model an attack differentiates (:mod:`.randomized`), and BPDA's straight-through layers
(:mod:`.bpda`). Imports the engine."""
