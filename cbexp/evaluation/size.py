"""A model's size: trainable parameters by component (``breakdown``), and the text ``cbexp
summary`` prints and a training run keeps as summary.txt (``summarize``), with the count of real
kernel taps beside it (tfc's RDFT kernel parameterization stores more numbers than taps).
"""

import tensorflow_compression as tfc


def count(variables):
  return sum(int(v.shape.num_elements()) for v in variables)


def _rdft_excess(layers):
  """Stored RDFT numbers minus kernel taps, over the SignalConv2D layers in ``layers``."""
  excess = 0
  for layer in layers:
    for module in [layer] + list(layer.submodules):
      if isinstance(module, tfc.SignalConv2D) and isinstance(
        module.kernel_parameter, tfc.RDFTParameter
      ):
        excess += count(module.kernel_parameter.trainable_variables) - int(
          module.kernel.shape.num_elements()
        )
  return excess


def breakdown(model):
  """{component: {part: count}} with the four top-level components of the comparison."""
  entropy_groups = model.entropy_model.parameter_groups()
  hyper_synthesis = {k: v for k, v in entropy_groups.items() if k.startswith("hyper_synthesis")}
  rest = {k: v for k, v in entropy_groups.items() if k not in hyper_synthesis}
  weights = lambda layers: count(w for layer in layers for w in layer.trainable_weights)
  return {
    "transforms": {"analysis": weights([model.analysis]), "synthesis": weights([model.synthesis])},
    "hyper_transforms": {
      "hyper_analysis": weights([model.hyper_analysis]),
      **{k: weights(v) for k, v in hyper_synthesis.items()},
    },
    "entropy_model": {k: weights(v) for k, v in rest.items()},
    "hyperprior": {"factorized_prior_on_z": count(model.hyperprior.trainable_variables)},
  }


def summarize(model, cfg):
  total = count(model.trainable_variables)
  parts = breakdown(model)
  parts_total = sum(sum(p.values()) for p in parts.values())
  if parts_total != total:  # every variable must belong to exactly one component
    raise RuntimeError(f"breakdown covers {parts_total} of {total} parameters")
  excess = _rdft_excess([model.analysis, model.synthesis, model.hyper_analysis])
  lines = [
    f"entropy: {cfg.entropy.name}",
    f"transform: {cfg.transform.get('name', 'ms2020')}, {cfg.transform.num_filters} filters, "
    f"latent_depth "
    f"{cfg.transform.latent_depth}, hyperprior_depth {cfg.transform.hyperprior_depth}",
    f"trainable_parameters: {total}",
    f"trainable_parameters_millions: {total / 1e6:.1f}M",
    f"kernel_taps_parameters: {total - excess}  (same, with RDFT-parameterized kernels "
    f"counted by their taps)",
  ]
  for component, counts in parts.items():
    lines.append(f"{component}: {sum(counts.values())}")
    lines += [f"  {name}: {n}" for name, n in counts.items()]
  return "\n".join(lines)
