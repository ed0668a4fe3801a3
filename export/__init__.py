"""ONNX export of the diffusion denoiser (the fast one-shots issue builds this).

Kept as a package now so the layout the project agreed on exists from the start.
"""
