"""tnl.eval"""
