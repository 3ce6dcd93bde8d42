"""Wire protocols between peers: message formats apart from the code that uses them."""
