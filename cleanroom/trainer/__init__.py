"""Phase B: DP training and DP evaluation over exported programs (service code only).

Nothing here imports manufacturer code: a model is a validated torch.export program, run as a
pure function. Submodules are imported by callers (`cleanroom.trainer.dpsgd`, `.evaluate`,
`.report`) so that importing the package stays cheap.
"""
