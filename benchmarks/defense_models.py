"""The two defended models of docs/defenses.md: the quick sweep's small CNN (trained here if it is not yet, as the
quick sweep trains it) behind each layer of `experiments/configs/defenses/my_defense.py`, saved as .keras files the
configs `experiments/configs/defenses/noise.toml` and `quantizer.toml` sweep.

    python benchmarks/defense_models.py            # writes results/defenses/cnn_noise.keras and cnn_quantizer.keras
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "results" / "defenses"))
    parser.add_argument("--models", default=str(ROOT / "results" / "models"), help="where the small CNN is trained")
    args = parser.parse_args()

    import keras

    from advsweep.models.config import ModelConfig
    from advsweep.models.training import train_model
    from advsweep.models.user import import_user_code

    (defense,) = import_user_code([str(ROOT / "experiments" / "configs" / "defenses" / "my_defense.py")])
    config = ModelConfig(kind="small_cnn", train_examples=10000, epochs=8)  # the quick sweep's small CNN
    file = Path(args.models) / config.model_id / "model.keras"
    if not file.is_file():
        train_model(config, Path(args.models))
    inner = keras.saving.load_model(file, compile=False)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for name, layer in (("cnn_noise", defense.GaussianNoise(sigma=0.3)), ("cnn_quantizer", defense.Quantize(levels=4))):
        inputs = keras.Input(shape=(28, 28, 1), name="image")
        keras.Model(inputs, inner(layer(inputs)), name=name).save(output / f"{name}.keras")
        print(output / f"{name}.keras")


if __name__ == "__main__":
    main()
