"""AutoAttack's gradient-free and minimal-norm members, FAB (:mod:`.fab`) and Square (:mod:`.square`), and the
ensemble's cascade over its versions (:mod:`.cascade`: standard, plus, rand). Imports the engine and the gradient
attacks (APGD is a member)."""
