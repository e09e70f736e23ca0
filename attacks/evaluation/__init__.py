"""What a sweep asks of an attack's results: the attack-failure checks (:mod:`.checks`, the six indicators and
the ensemble's checks) and the minimal-ε search (:mod:`.minimal`, bisection with PGD, and the robustness curve).
Imports the engine and the gradient attacks."""
