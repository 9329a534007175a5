// Minichat web page
