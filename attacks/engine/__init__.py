"""The engine every own attack runs on: the argument checks, losses, input gradients and the result
(:mod:`.core`), the step-and-programme loop that batches every model call of an attack into row blocks and keeps
each example's random stream (:mod:`.programme`), the measured plan of rows per call (:mod:`.plan`), the threat
models' geometry (:mod:`.geometry`: norms, the box, the ball projections, the random starts) and every attack's
declaration and argument checks (:mod:`.spec`). Imports the layers below (assets, models) and nothing else of
attacks/."""
