"""The NumPy oracle: the definition of every cell's forward pass and BPTT.

Written plainly against an array module ``xp`` (NumPy or CuPy), one timestep at a time,
so that it reads like the equations. It is the reference the compiled backends are
tested against, not a fallback to tune.

Notation (shared by every backend and kernel in fastlstm)
----------------------------------------------------------
  T   timesteps            B   batch rows           I   input features
  H   units                G   gate width: 4H (LSTM), 3H (CIFG LSTM, GRU), H (SimpleRNN)
  s   step index, the order in which timesteps are processed (0..T-1)
  t   time index into x: t = s, or t = T-1-s when go_backwards

  x      [T,B,I]   inputs, time-major        kernel  W [I,G]   recurrent_kernel U [H,G]
  bias   [G]       (GRU reset_after: [2,G])  peephole P [3,H] rows [i,f,o]
  h0,c0  [B,H]     initial states            mask    [T,B] bool, True = step is used
  input_dropout_mask     [B,I]  multiplied into every x_t     (variational dropout)
  recurrent_dropout_mask [B,H]  multiplied into every h_{t-1} (variational dropout)

Outputs are indexed by step s (Keras: go_backwards returns the reversed sequence); every
saved activation is indexed by time t, so that weight and input gradients are single
products over all T*B rows.

Masking follows Keras (``zero_output_for_mask=False``): at a masked step the state (h, c)
is carried unchanged and the output repeats the previous step's output; before a row's
first unmasked step that output is zero, while the state is the initial state. The layers'
``zero_output_for_mask=True`` is not an op option: the layer multiplies the op's output (and
the output's gradient) by the mask afterwards.
"""
