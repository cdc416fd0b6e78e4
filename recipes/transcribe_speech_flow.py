"""NeMo's examples/asr/transcribe_speech.py, step for step, with NeMo's own helpers (the script itself ships
with NeMo's sources, not with its wheel). It never imports nemo_sew: NeMo imports the .nemo file's class by
path, and that import must register our _target_ prefix by itself, exactly as with NeMo's script.

    python recipes/transcribe_speech_flow.py MODEL.nemo MANIFEST.json OUT.json [BATCH_SIZE]

With a NeMo source checkout the real script does the same:
    python examples/asr/transcribe_speech.py model_path=MODEL.nemo dataset_manifest=MANIFEST.json output_filename=OUT.json
"""

import sys

import torch
from nemo.collections.asr.parts.submodules.ctc_decoding import CTCDecodingConfig
from nemo.collections.asr.parts.utils import transcribe_utils
from omegaconf import OmegaConf


def main(model_path: str, manifest: str, out: str, batch_size: int = 16) -> None:
    cfg = OmegaConf.create(
        {
            "model_path": model_path, "pretrained_name": None, "dataset_manifest": manifest, "audio_dir": None,
            "append_pred": False, "audio_type": "wav", "audio_key": "audio_filepath", "presort_manifest": True,
            "output_filename": out, "pred_name_postfix": None, "batch_size": batch_size,
            "decoding": {"beam": {"return_best_hypothesis": True}},
        }
    )  # fmt: skip
    model, name = transcribe_utils.setup_model(cfg, torch.device("cpu"))
    model.change_decoding_strategy(OmegaConf.structured(CTCDecodingConfig()))
    model.eval()
    filepaths, sorted_manifest = transcribe_utils.prepare_audio_data(cfg)
    override = model.get_transcribe_config()
    override.batch_size = batch_size
    with torch.no_grad():
        hyps = model.transcribe(audio=filepaths, override_config=override)
    if sorted_manifest:
        hyps = transcribe_utils.restore_transcription_order(manifest, hyps)
    out_file, _ = transcribe_utils.write_transcription(hyps, cfg, name, filepaths=filepaths)
    print("WROTE", out_file, type(model).__name__, model.cfg.profile.get("squeeze"))


if __name__ == "__main__":
    main(*sys.argv[1:4], *(int(a) for a in sys.argv[4:5]))
