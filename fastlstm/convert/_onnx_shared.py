"""What ``to_onnx`` (_onnx_export) and ``from_onnx`` (_onnx_import) agree on: ONNX's weight
layouts and gate orders, how fastlstm's CIFG maps to ``input_forget``, and how activation
parameters are written.

Weight layouts: ONNX keeps ``W (D, G*H, I)``, ``R (D, G*H, H)``, ``B (D, 2*G*H)``
(input bias then recurrent bias) and for the LSTM ``P (D, 3H)``; its LSTM gates are
``[i|o|f|c]``, peepholes ``[i|o|f]``; GRU gates ``[z|r|h]`` as Keras, and
``linear_before_reset=1`` is Keras's ``reset_after=True``.

Coupled input-forget gate (CIFG): ONNX's ``input_forget=1`` is not defined in the ONNX
text beyond "couple the input and forget gates"; ONNX Runtime computes ``f = 1 - i`` with
``i`` from the *input*-gate weights (and ignores the forget-gate weights and peephole).
fastlstm's CIFG is ``i = 1 - f`` with ``f`` from the forget-gate weights. With a recurrent
activation ``s`` where ``s(-z) = 1 - s(z)`` (sigmoid, or a hard sigmoid with beta = 0.5) the
two agree when ONNX's input-gate block holds the *negated* forget-gate weights, biases and
peephole: ``i_onnx = s(-z_f) = 1 - f``, ``f_onnx = 1 - i_onnx = f``. That is what is
exported (the forget block also keeps the true forget weights); other recurrent activations
raise. Verified against ONNX Runtime in the tests.

Activation parameters: ONNX Runtime consumes ``activation_alpha`` / ``activation_beta``
only for the functions that take them, in order. To read the same under the other
interpretation (one value per function), a graph that needs any parameters writes ``tanh`` as
``ScaledTanh(1, 1)`` and ``linear`` as ``Affine(1, 0)``.
"""
from __future__ import annotations

# gate blocks of each ONNX operator
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# the activations an operator uses when its node names none
DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
