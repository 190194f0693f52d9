"""Pure maths shared by objectives and models: masked next-token losses and the chunked linear cross-entropy."""
