"""Triton kernels for tnl (imported as `tnl_kernels`): Lightning Attention-2 and SRMSNorm. No model code here."""
