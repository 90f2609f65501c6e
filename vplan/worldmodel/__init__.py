"""The world model: VAE, text encoder, UNet3D backbone, masked conditional diffusion and samplers."""
