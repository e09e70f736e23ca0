"""The gradient attacks: FGSM/FGM (:mod:`.fgm`), PGD and BIM (:mod:`.pgd`), AutoAttack's APGD-CE, APGD-DLR and
APGD-T (:mod:`.apgd`), and the same FGSM/FGM, PGD and BIM through foolbox (:mod:`.foolbox_adapter`). Imports the
engine and nothing else of attacks/."""
