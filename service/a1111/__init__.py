"""A1111 semantics: what an sdapi request means and what its response says (request models, planning, infotext,
styles, sampler names, image decoding and encoding, response building). No web framework and no gRPC here."""
