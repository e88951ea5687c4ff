"""`peel demo`: a sample legacy monolith, a sample new `orders` service, and the runner that puts
Peel in front of both so an operator can peel `/orders` off the monolith in a few commands."""
