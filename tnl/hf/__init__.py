"""tnl.hf"""
