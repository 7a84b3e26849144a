"""Model loading through ltx-core: video-only transformer, video VAE encoder, text encoder."""
