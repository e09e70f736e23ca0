"""The engine every own attack runs on: the argument checks, losses, input gradients and the result
(:mod:`.core`), the step-and-programme loop that batches every model call of an attack into row blocks and keeps
each example's random stream (:mod:`.programme`), the measured plan of rows per call (:mod:`.plan`) and the exact
L1 ball ∩ box projection (:mod:`.l1`). Imports the layers below (assets, models) and nothing else of attacks/."""
