"""The node agent that runs at each site: data loading, site policy, the answer loop."""
