import lm.data, lm.data.config, lm.data.tokenizers
if not hasattr(lm.data, "default_config"):
    lm.data.default_config = lm.data.config.default_config
    lm.data.make_tokenizer = lm.data.tokenizers.make_tokenizer
# TEMP (scratch only): flax DenseGeneral + logical rules bug in lm/nn dense(); drop the rules.
import contextlib, jax
import lm.train.sharding as _sh
@contextlib.contextmanager
def _use_mesh(mesh, rules):
    with jax.set_mesh(mesh):
        yield
_sh.use_mesh = _use_mesh
