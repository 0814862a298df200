"""tnl.models"""
