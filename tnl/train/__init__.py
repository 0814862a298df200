"""tnl.train"""
